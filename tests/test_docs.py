"""The manual: built strictly, its generated references complete, its runnable snippets run as written."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field
from pydantic.dataclasses import dataclass

from models.choices import STRICT
from models.training import TrainConfig
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]
RUNNABLE = re.compile(r"<!-- runnable -->\n```sh\n(.*?)```", re.S)


@dataclass(frozen=True, config=STRICT)
class WithANewSetting:
    documented: int = 1
    """Said."""
    brand_new: int = Field(2, ge=0)


@dataclass(frozen=True, config=STRICT)
class WithANewTable:
    train: TrainConfig = TrainConfig()
    """Said."""
    table: WithANewSetting = WithANewSetting()
    """Said too."""


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [*MKDOCS, "--config-file", str(root / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def copy_of_the_manual(tmp_path: Path) -> Path:
    """What the build reads (mkdocs.yml, docs/, the README and files its snippets and references read)."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / name, root / name)
    for folder in ("docs", "benchmarks", "stacking/configs"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))
    return root


def test_the_manual_builds_strictly_with_every_setting_and_command_and_the_readmes_links_land(tmp_path):
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    configuration = (tmp_path / "site" / "configuration" / "index.html").read_text()
    from stacking.training.config import FitConfig, TrainConfig

    tables = {"tta", "train", "cluster", "augmentation"}
    for name in {*FitConfig.__dataclass_fields__, *TrainConfig.__dataclass_fields__} - tables:
        assert f"<code>{name}</code>" in configuration, name
    for table in ("[tta]", "[train]", "[augmentation]", "[cluster]", "[[model]]"):
        assert f">{table}<" in configuration, table
    # [tta] policy, as the file spells it, with its flag
    assert re.search(r"<code>policy</code></td>\s*<td><code>--tta-policy</code>", configuration)
    service = (tmp_path / "site" / "service" / "index.html").read_text()
    from app.settings import Settings

    for name in Settings.model_fields:
        assert f"STACKSERVE_{name.upper()}" in service, name
    for page, anchor in re.findall(r"\]\(docs/([\w-]+)\.md(?:#([\w-]+))?\)", (ROOT / "README.md").read_text()):
        html = (tmp_path / "site" / ("" if page == "index" else page) / "index.html").read_text()  # the page exists
        assert not anchor or f'id="{anchor}"' in html, f"README links to docs/{page}.md#{anchor}: no such part"
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    import typer

    from app.cli import cli as app

    for name, sub in typer.main.get_command(app).commands.items():
        assert f"stacking {name}" in cli, name
        for param in sub.params:
            assert all(opt in cli for opt in param.opts if opt.startswith("--")), (name, param.opts)


@pytest.mark.slow
@pytest.mark.parametrize(
    "break_it, named",
    [
        (lambda docs: (docs / "studies.md").write_text("# S\n\n[gone](nowhere.md)\n"), "nowhere.md"),
        (
            lambda docs: (docs / "studies.md").write_text("# S\n\n[gone](cli.md#no-such-part)\n"),
            "no-such-part",
        ),
        (lambda docs: (docs / "studies.md").unlink(), "studies.md"),
    ],
    ids=["missing-page", "missing-anchor", "page-in-nav-gone"],
)
def test_a_broken_link_or_a_missing_page_fails_the_build(tmp_path, break_it, named):
    root = copy_of_the_manual(tmp_path)
    break_it(root / "docs")
    done = build(root, tmp_path / "site")
    assert done.returncode != 0 and named in done.stderr, done.stderr


def test_a_setting_without_a_description_fails_the_build(tmp_path, monkeypatch):
    """The generated reference refuses an undocumented field by name, so a new setting cannot go unlisted."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    from mkdocs.exceptions import PluginError

    monkeypatch.setattr("stacking.training.config.FitConfig", WithANewSetting)
    with pytest.raises(PluginError, match="top level brand_new: no description"):
        hooks.fit_reference()
    monkeypatch.setattr("stacking.training.config.FitConfig", WithANewTable)
    with pytest.raises(PluginError, match="WithANewSetting brand_new: no description"):
        hooks.fit_reference()


def runnable_blocks() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(page.name, block) for page in pages for block in RUNNABLE.findall(page.read_text())]


@pytest.mark.slow
@pytest.mark.parametrize("page, block", runnable_blocks(), ids=lambda v: v if v.endswith(".md") else "")
def test_a_runnable_snippet_runs_as_written(page, block, tmp_path):
    """Each block marked ``<!-- runnable -->`` runs in an empty folder with the installed ``stacking`` (the
    service's port swapped for a free one), and every command in it succeeds."""
    port = str(free_port())
    script = "set -euo pipefail\n" + block.replace("8000", port)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "STACKSERVE_CACHE_DIR": str(tmp_path / "cache"),
    }
    run = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = run.communicate(timeout=900)
    finally:  # what the block started in the background (a server) goes with it, even when a command failed
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    done = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    assert done.returncode == 0, f"{page}:\n{block}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if "/v1/predict" in block:
        assert '"predictions"' in done.stdout
