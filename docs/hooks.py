"""The manual's generated references: every setting, from the typed models themselves, so none can go undocumented.

``<!-- reference: fit -->`` becomes a table per TOML table of ``stacking.training.config.FitConfig``
and ``<!-- reference: service -->`` the ``STACKSERVE_*`` variables of ``app.settings.Settings``:
key, flag, default, allowed values and meaning, each meaning the field's own docstring.
``<!-- reference: cli -->`` is the command line as Typer documents it.
``<!-- reference: benchmarks -->`` lists benchmarks/ by each script's docstring and the pages
that quote it. A field or script without its docstring fails the build (``mkdocs build --strict``
runs in ``make test``).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError


def _command():
    """The whole command line (``serve`` and ``demo`` included) as Typer builds it to run it."""
    import typer

    from app.cli import cli

    return typer.main.get_command(cli)


def _fit_flags() -> set[str]:
    """The options ``stacking fit`` takes, as the command line itself declares them."""
    fit = _command().commands["fit"]
    return {name for param in fit.params for name in param.opts if name.startswith("--")}


def _resolve(schema: dict, prop: dict) -> dict:
    """A property with its ``$ref`` (an enum, a nested table) and ``anyOf`` (optional values) followed."""
    for option in prop.get("anyOf", []):
        if "$ref" in option or "enum" in option:
            prop = {**option, **{k: v for k, v in prop.items() if k != "anyOf"}}
    if "$ref" in prop:
        return {**schema["$defs"][prop["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop


def _allowed(prop: dict) -> str:
    if "enum" in prop:
        return ", ".join(f"`{v}`" for v in prop["enum"])
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    said = [f"{sign} {prop[key]}" for key, sign in bounds.items() if key in prop]
    kinds = [option.get("type") for option in prop.get("anyOf", [prop])]
    return ", ".join([" or ".join(k for k in kinds if k)] + said)


def _default(prop: dict) -> str:
    """The default as TOML and JSON write it; none shown where it is not one value (its meaning says)."""
    if "default" not in prop:
        return ""
    return "(unset)" if prop["default"] is None else f"`{json.dumps(prop['default'])}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _check_documented(schema: dict) -> None:
    """Every field of the model and of each table in it has its description, or the build fails naming it."""
    tables = {"top level": schema, **{name: table for name, table in schema.get("$defs", {}).items()}}
    for where, table in tables.items():
        for name, prop in table.get("properties", {}).items():
            if not prop.get("description"):
                raise PluginError(
                    f"{where} {name}: no description; write a docstring under the field (it is the manual's entry)"
                )


def _settings_rows(schema: dict, props: dict, flags: dict[str, str]) -> list[tuple[str, ...]]:
    return [
        (f"`{name}`", flags.get(name, ""), _default(raw), _allowed(_resolve(schema, raw)), raw["description"])
        for name, raw in props.items()
    ]


def fit_reference() -> str:
    from pydantic import TypeAdapter

    from stacking.training.config import DERIVED, FLAGS, NESTED_OPTIONS, TOML_NAMES, FitConfig

    schema = TypeAdapter(FitConfig).json_schema()
    _check_documented(schema)
    fit_flags = _fit_flags()
    nested = {where: flag for where, flag in NESTED_OPTIONS.values()}

    def flags_of(table: tuple[str, ...], props: dict) -> dict[str, str]:
        found = {}
        for name in props:
            flag = nested.get((*table, name)) if table else FLAGS.get(name, "--" + name.replace("_", "-"))
            if flag and flag in fit_flags:
                found[name] = f"`{flag}`"
        return found

    head = ("key", "flag", "default", "allowed", "meaning")
    tables = {"": ((), schema["properties"])}
    for name, raw in schema["properties"].items():
        prop = _resolve(schema, raw)
        if prop.get("type") == "object" and "properties" in prop:
            tables[TOML_NAMES.get((name,), f"[{name}]")] = ((name,), prop["properties"])
    train = schema["$defs"]["TrainConfig"]["properties"]
    tables[TOML_NAMES[("train", "augmentation")]] = (
        ("train", "augmentation"),
        _resolve(schema, train["augmentation"])["properties"],
    )
    tables["[[model]]"] = (("model",), schema["$defs"]["ModelConfig"]["properties"])
    parts = []
    for title, (path, props) in tables.items():
        nested_tables = {n for n, p in props.items() if "properties" in _resolve(schema, p)}
        shown = {n: p for n, p in props.items() if n not in nested_tables and (*path, n) not in DERIVED}
        flags = flags_of(path, shown)
        in_file = {n: TOML_NAMES.get((*path, n), n).split(" ")[-1] for n in shown}  # [tta] name is policy
        rows = _settings_rows(
            schema, {in_file[n]: p for n, p in shown.items()}, {in_file[n]: f for n, f in flags.items()}
        )
        parts.append(f"### {title or 'Top level'}\n\n" + _table(rows, head))
    return "\n\n".join(parts)


def service_reference() -> str:
    from app.settings import Settings

    schema = Settings.model_json_schema()
    _check_documented(schema)
    rows = [
        (f"`STACKSERVE_{name.upper()}`", _default(raw), _allowed(_resolve(schema, raw)), raw["description"])
        for name, raw in schema["properties"].items()
    ]
    return _table(rows, ("variable", "default", "allowed", "meaning"))


def benchmarks_reference(docs: Path) -> str:
    """Each script in benchmarks/: the question its docstring asks, and the pages that show what it measured."""
    rows = []
    for script in sorted((docs.parent / "benchmarks").glob("*.py")):
        question = (ast.get_docstring(ast.parse(script.read_text())) or "").split("\n\n")[0]
        if not question:
            raise PluginError(
                f"benchmarks/{script.name}: no docstring; say what it measures (it is the manual's entry)"
            )
        mention = f"benchmarks/{script.name}"
        pages = [
            f"[{page.stem.replace('-', ' ')}]({page.name})"
            for page in sorted(docs.glob("*.md"))
            if page.name != "benchmarks.md" and mention in page.read_text()
        ]
        rows.append((f"`python {mention}`", question, ", ".join(pages) or "(none yet)"))
    return _table(rows, ("script", "what it measures", "its numbers"))


def cli_reference() -> str:
    """Every command and option, as Typer writes its own app's docs (``typer MODULE utils docs``)."""
    import typer
    from typer.cli import get_docs_for_click

    command = _command()
    return get_docs_for_click(obj=command, ctx=typer.Context(command), name="stacking", indent=1)


def on_page_markdown(markdown: str, config: Any, **_: Any) -> str:
    references = {
        "<!-- reference: cli -->": cli_reference,
        "<!-- reference: fit -->": fit_reference,
        "<!-- reference: service -->": service_reference,
        "<!-- reference: benchmarks -->": lambda: benchmarks_reference(Path(config["docs_dir"])),
    }
    for marker, make in references.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
