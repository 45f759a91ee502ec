"""Fit settings: defaults, overridden by a TOML file, overridden by command-line options.

One typed model (pydantic dataclasses, ``extra="forbid"``): each field's type and bounds are
its check, each choice is its enum (``stacking.choices``), nested tables are the training,
augmentation, TTA and cluster settings, and each base model is a ``[[model]]`` table of its
own (``ModelConfig``: architecture, size, weights, head, recipe), resolved here against the
top-level defaults. So a misspelt key or a value out of range is an error naming the flag,
or the TOML table and key, before any work starts; what the types cannot say (one setting
against another) is checked after, in :func:`validate`.

Precedence: a setting's default <- the file's top level <- a ``[[model]]`` table's own
value <- the command line, which has the last word everywhere it speaks.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from models.choices import STRICT, Head
from models.registry import get_spec, is_custom, load_custom_builder
from models.training import Augmentation, TrainConfig
from stacking.choices import (
    AUTO,
    META,
    RUNTIME,
    Calibration,
    Executor,
    Final,
    MetaCriterion,
    OnBadImage,
    Protocol,
    Quantize,
    Runtime,
    Weights,
)
from stacking.errors import UserError
from stacking.inference.tta import TTAPolicy


@dataclass(frozen=True, config=STRICT)
class ClusterConfig:
    """How a fit's jobs are run. None of it changes what a job computes, except the thread count (see jobs)."""

    executor: Executor = Executor.LOCAL
    """Local: one after another in this process; ray: tasks on a Ray cluster."""
    address: str = ""
    """The Ray cluster to join ("auto", "ray://head:10001"); empty: start a local one."""
    cpus_per_job: float = Field(1.0, gt=0)
    """Each job's Ray request; its TensorFlow threads follow it."""
    gpus_per_job: float = Field(0.0, ge=0)
    """1 on GPU nodes; a fraction shares a GPU (memory growth is switched on)."""
    max_retries: int = Field(2, ge=0)
    """Times a job is run again when its worker process dies."""


DEFAULT_MODELS = ("tiny_cnn", "small_resnet", "mini_mobilenet")
WEIGHT_SUFFIXES = (".weights.h5", ".h5")  # Keras 3's weights files, and the legacy HDF5 ones keras.applications ships


def _weights(value: str) -> str:
    if value in tuple(Weights) or value.endswith(WEIGHT_SUFFIXES):
        return value
    raise ValueError(
        "expected 'imagenet', 'none', or the path of a Keras weights file of the backbone without its top "
        f"(ending in {' or '.join(WEIGHT_SUFFIXES)})"
    )


WeightsSource = Annotated[str, AfterValidator(_weights)]


def base_name(architecture: str) -> str:
    """A base model's default name in the bundle: its architecture, or module.function for your own."""
    return architecture.replace(":", ".")


@dataclass(frozen=True, config=STRICT)
class ModelConfig:
    """One base model (a ``[[model]]`` table), every setting resolved against the top-level defaults."""

    architecture: str
    """Required: a registered architecture, or "pkg.module:function" for your own."""
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")]
    """Unique in the bundle, its folder and column names (default: the architecture)."""
    image_size: Annotated[int, Field(ge=1)]
    """Its input side (default: the top-level image_size)."""
    weights: WeightsSource
    """"imagenet", "none", or a weights file of the backbone without its top (default: the top-level weights)."""
    head: Head
    """Its head (default: the top-level head)."""
    dropout: Annotated[float, Field(ge=0, lt=1)]
    """Its dropout (default: the top-level dropout)."""
    train: TrainConfig
    """Its recipe: [model.train] and [model.augmentation] over the top-level [train] and [augmentation]."""

    @property
    def start(self) -> str | None:
        """The ``weights`` argument of the architecture's builder: None from scratch, "imagenet", or a file."""
        return None if self.weights == Weights.NONE else self.weights

    @property
    def weights_file(self) -> Path | None:
        return None if self.weights in tuple(Weights) else Path(self.weights)

    @property
    def spec(self) -> str:
        """As ``--models`` writes it: ARCH@SIZE."""
        return f"{self.architecture}@{self.image_size}"


def default_members() -> tuple[ModelConfig, ...]:
    """The default stack: the three built-ins at the default size, from scratch."""
    return tuple(ModelConfig(name, name, 32, Weights.NONE, Head.GAP, 0.2, TrainConfig()) for name in DEFAULT_MODELS)


@dataclass(frozen=True, config=STRICT)
class FitConfig:
    """Everything ``stacking fit`` does: the top level of the TOML file, its tables, and the command line."""

    protocol: Protocol = Protocol.HOLDOUT
    """How out-of-fold rows are made: holdout (one held-out part) or kfold (every image out of fold once)."""
    folds: int = Field(5, ge=2)
    """K of kfold."""
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    """Holdout: the part of the images held out for the meta-learner's rows."""
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    """The part of each fit's training images kept aside for early stopping and the best epoch."""
    group_column: str = ""
    """A column of DIR/train.csv (or DIR/groups.csv: Id,<column>) whose images stay on one side of every split."""
    final: Final = Final.FOLD_AVERAGE
    """Kfold's served models: the K fold models (stacked per fold, averaged), or refit on every image."""
    meta: Literal[META.allowed] = AUTO
    """The meta-learner; auto: the candidate cross-validation ranks first (a stack must beat the best model)."""
    meta_criterion: MetaCriterion = MetaCriterion.LOG_LOSS
    """How candidates are ranked: log_loss (lower), accuracy."""
    meta_folds: int = Field(5, ge=2)
    """Cross-validation folds over the OOF rows that rank the candidates."""
    tta_features: bool = False
    """Also give the meta-learner each model's TTA entropy and view disagreement."""
    calibration: Calibration = Calibration.NONE
    """Temperature: scale the chosen output, fitted on OOF rows only."""
    image_size: int = Field(32, ge=1)
    """The default input side of every base model."""
    weights: WeightsSource = Weights.IMAGENET
    """The default starting weights of keras.applications families: ImageNet's (downloaded once to
    ~/.keras/models), "none" (from scratch), or a weights file of the backbone without its top. Built-in
    architectures have none."""
    seed: int = 0
    """Splits, initial weights, augmentation and shuffling: the same seed gives the same bundle."""
    on_bad_image: OnBadImage = OnBadImage.ERROR
    """An unreadable image: error stops the run naming it; skip leaves it out and lists it."""
    head: Head = Head.GAP
    """The default head; gap: pool, dropout, softmax; gap-dense adds a hidden dense + BatchNorm layer."""
    dropout: float = Field(0.2, ge=0, lt=1)
    """The default dropout before each head's softmax."""
    deterministic: bool = True
    """Deterministic TensorFlow ops: the same seed gives the same weights."""
    mixed_precision: bool = False
    """Float16 compute, for GPU users; off on CPU."""
    runtime: Literal[RUNTIME.allowed] = AUTO
    """Where the base models are served and their OOF rows computed: "auto" exports each to LiteRT and serves it
    there unless TensorFlow is faster; "litert" fails the fit if a model cannot be exported; "tf" exports
    nothing."""
    quantize: Quantize = Quantize.NONE
    """"int8": also quantize each export (static, calibrated on training images); served only where, on the
    model's OOF rows, accuracy does not drop and log-loss rises by at most
    stacking.training.export.INT8_LOG_LOSS_TOLERANCE."""
    cascade_accuracy_tolerance: float = Field(0.001, ge=0, le=1)
    """The accuracy the cascade may give up against the stack on the OOF rows it is tuned on (0.001 = 0.1 point):
    more lets cheaper stages answer more images (and get more of them wrong)."""
    cascade_log_loss_tolerance: float = Field(0.0, ge=0)
    """The log-loss, in nats, the cascade may give up against the stack on those rows."""
    tta_diagnostic_views: int = Field(10, ge=1)
    """Views measured for the TTA diagnostics (at most the policy's)."""
    tta: TTAPolicy = TTAPolicy()
    """The views each image is answered from: [tta] in the file."""
    train: TrainConfig = TrainConfig()
    """The default training recipe of every base model: [train] in the file."""
    cluster: ClusterConfig = ClusterConfig()
    """Where the jobs run: [cluster] in the file."""
    models: tuple[ModelConfig, ...] = Field(default_factory=default_members, min_length=1)
    """The base models: [[model]] tables, or models = ["ARCH[@SIZE]", ...] (--models) with the defaults
    (default: the three built-in architectures). Last, so a top-level setting's error is named before the tables
    that inherit it."""

    @property
    def sizes(self) -> list[int]:
        """The distinct input sizes of the base models, ascending: every image is resized once to each."""
        return sorted({m.image_size for m in self.models})

    def as_dict(self) -> dict:
        """Plain JSON values (the manifest's ``config``): enums as their strings, the TTA policy as served."""
        return {**TypeAdapter(FitConfig).dump_python(self, mode="json"), "tta": self.tta.as_dict()}


# Command-line options stored under another name than their own: the option's key, where it goes, its flag. Every
# other option is its top-level key, its flag that key dashed.
NESTED_OPTIONS = {
    "tta_views": (("tta", "views"), "--tta"),
    "tta_policy": (("tta", "name"), "--tta-policy"),
    "epochs": (("train", "epochs"), "--epochs"),
    "executor": (("cluster", "executor"), "--executor"),
    "ray_address": (("cluster", "address"), "--ray-address"),
}
FLAGS = dict(NESTED_OPTIONS.values())
# Where a nested setting sits in the TOML file, where that differs from the model.
TOML_NAMES = {("tta", "name"): "[tta] policy", ("train", "augmentation"): "[augmentation]"}
# Settings the fit derives from another, never a key of the file: where each comes from.
DERIVED = {("tta", "allow_flip"): "[augmentation] flip"}
# Top-level settings that are the defaults of every [[model]] table.
MEMBER_DEFAULTS = ("image_size", "weights", "head", "dropout")


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path}: not valid TOML ({exc})") from None


def parse_spec(spec: str, where: str) -> dict[str, Any]:
    """``ARCH`` or ``ARCH@SIZE`` (``--models``, ``models = [...]``) as a [[model]] table."""
    architecture, at, size = spec.strip().partition("@")
    if not at:
        return {"architecture": architecture}
    if not size.isdigit():
        raise UserError(f"{where}: {spec!r}: expected ARCH or ARCH@SIZE with SIZE a whole number of pixels")
    return {"architecture": architecture, "image_size": int(size)}


def _relative_to(folder: Path | None, weights: Any) -> Any:
    """A weights file named in the config file is relative to that file's folder; everything else is as given."""
    if folder is None or not isinstance(weights, str) or weights in tuple(Weights) or Path(weights).is_absolute():
        return weights
    return str((folder / weights).resolve())


def _builtin_or_custom(architecture: Any) -> bool | None:
    """Whether an architecture has no pretrained weights of ours to start from; None when it is unknown."""
    if not isinstance(architecture, str):
        return None
    if is_custom(architecture):
        return True
    try:
        return get_spec(architecture).builtin
    except KeyError:
        return None  # validate() names it


def _member(
    table: Any,
    top: dict[str, Any],
    train: dict[str, Any],
    flagged: set[tuple[str, ...]],
    folder: Path | None,
    label: str,
    typed: bool = False,
) -> dict[str, Any]:
    """One [[model]] table with the top-level defaults filled in and the command line on top (``typed``: the table
    came from ``--models ARCH@SIZE``, whose own size is as much the command line's as ``--image-size``)."""
    if not isinstance(table, dict):
        raise UserError(f"{label}: expected a table, got {table!r}")
    member = dict(table)
    own_train = dict(member.pop("train", {}) or {})
    own_augmentation = dict(member.pop("augmentation", {}) or {})
    for key in MEMBER_DEFAULTS:
        if key in top and (key not in member or (key,) in flagged and not typed):
            member[key] = top[key]
    architecture = member.get("architecture")
    member.setdefault("name", base_name(architecture) if isinstance(architecture, str) else "")
    without_weights = _builtin_or_custom(architecture)
    weights = member.get("weights")
    if without_weights and "weights" in table and weights != Weights.NONE:
        raise UserError(
            f"{label} weights {weights!r}: {architecture} "
            + (
                "is your own architecture: its function builds its weights"
                if is_custom(architecture)
                else "is a built-in architecture without pretrained weights"
            )
            + '; leave weights out or set "none"'
        )
    if without_weights:
        member["weights"] = Weights.NONE  # the top-level default is for keras.applications families
    elif "weights" in table:
        member["weights"] = _relative_to(folder, weights)
    recipe = {k: v for k, v in train.items() if k != "augmentation"}
    recipe.update(own_train)
    recipe.update({place[1]: train[place[1]] for place in flagged if place[0] == "train"})
    recipe["augmentation"] = {**train["augmentation"], **own_augmentation}
    member["train"] = recipe
    return member


def _members(
    values: dict[str, Any], train: dict[str, Any], flagged: set[tuple[str, ...]], folder: Path | None, where: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """The base models as resolved tables, and how the user names each (for errors)."""
    shorthand, tables = values.pop("models", None), values.pop("model", None)
    if shorthand is not None and tables is not None and ("models",) not in flagged:
        raise UserError(f"{where}: give models = [...] or [[model]] tables, not both")
    if ("models",) in flagged or tables is None:
        source = "--models" if ("models",) in flagged else "models"
        specs = DEFAULT_MODELS if shorthand is None else shorthand
        if isinstance(specs, str) or not all(isinstance(s, str) for s in specs):
            raise UserError(f"{source} {specs!r}: expected a list of ARCH or ARCH@SIZE")
        if not specs:
            raise UserError(f"{source}: no base model given")
        tables = [parse_spec(s, source) for s in specs]
        labels = [f"{source} {s}" if shorthand is not None else f"model {s!r}" for s in specs]
        folder = None  # a path there is the user's as typed
    else:
        if not isinstance(tables, list) or not tables:
            raise UserError(f"{where} model: expected [[model]] tables, one per base model")
        labels = [
            f"[[model]] {t.get('name') or t.get('architecture') or f'#{i + 1}'!r}"
            if isinstance(t, dict)
            else f"[[model]] #{i + 1}"
            for i, t in enumerate(tables)
        ]
    defaults = {key: getattr(FitConfig(), key) for key in MEMBER_DEFAULTS}
    top = {**defaults, **{key: values[key] for key in MEMBER_DEFAULTS if key in values}}
    typed = ("models",) in flagged
    return [_member(t, top, train, flagged, folder, label, typed) for t, label in zip(tables, labels)], labels


def _nest(
    raw: dict[str, Any], overrides: dict[str, Any], where: str, folder: Path | None
) -> tuple[dict[str, Any], set[tuple[str, ...]], list[str]]:
    """The file's tables as the model nests them ([augmentation] inside [train], [tta] policy as the policy's
    name, each [[model]] resolved), with the command line's values on top; the places the command line set; and
    each base model as the user named it."""
    values = dict(raw)
    tta = dict(values.pop("tta", {}))
    for (_, key), source in DERIVED.items():
        if key in tta:
            raise UserError(f"[tta] {key} follows {source}; set that instead")
    if "name" in tta:  # the policy's field in the model, not a key of the file
        raise UserError(f"{where} [tta]: unknown setting(s) ['name']; known: {', '.join(_known(('tta',)))}")
    if "policy" in tta:
        tta["name"] = tta.pop("policy")
    train = dict(values.pop("train", {}))
    augmentation = dict(values.pop("augmentation", {}))
    cluster = dict(values.pop("cluster", {}))
    tables = {"tta": tta, "train": train, "cluster": cluster}
    flagged: set[tuple[str, ...]] = set()
    for key, value in overrides.items():
        if value is None:
            continue
        place = NESTED_OPTIONS[key][0] if key in NESTED_OPTIONS else (key,)
        (tables[place[0]] if len(place) == 2 else values)[place[-1]] = value
        flagged.add(place)
    train["augmentation"] = augmentation
    if ("weights",) not in flagged and "weights" in values:
        values["weights"] = _relative_to(folder, values["weights"])
    members, labels = _members(values, train, flagged, folder, where)
    # Random TTA views mirror only if every base model was trained on mirrored images.
    tta["allow_flip"] = all(m["train"]["augmentation"].get("flip", True) for m in members)
    return {**values, **tables, "models": members}, flagged, labels


def _name(place: tuple[str, ...], flagged: set[tuple[str, ...]], labels: list[str]) -> str:
    """A setting as the user gave it: its flag, or its TOML table and key."""
    if place[:1] == ("models",) and len(place) > 1 and place[1].isdigit():
        key = place[2:]
        if key in flagged:
            return FLAGS.get(key, "--" + key[-1].replace("_", "-"))
        label = labels[int(place[1])]
        if key[:2] == ("train", "augmentation"):
            return f"{label} augmentation {'.'.join(key[2:])}".rstrip()
        return f"{label} {'.'.join(key)}".rstrip()
    if place in flagged:
        return FLAGS.get(place, "--" + place[0].replace("_", "-"))
    if len(place) == 1:
        return place[0]
    table = TOML_NAMES.get(place[:2]) if len(place) > 2 else None
    if table is not None:
        return f"{table} {'.'.join(place[2:])}"
    return TOML_NAMES.get(place, f"[{place[0]}] {'.'.join(place[1:])}")


def _known(table: tuple[str, ...]) -> list[str]:
    """The keys a TOML table takes (its nested tables are tables of their own; the TTA policy's name is ``policy``,
    its flip follows [augmentation])."""
    cls = {
        (): FitConfig,
        ("tta",): TTAPolicy,
        ("train",): TrainConfig,
        ("train", "augmentation"): Augmentation,
        ("cluster",): ClusterConfig,
        ("models",): ModelConfig,
    }[table]
    nested = {"tta", "train", "cluster", "augmentation", "models", *(key for _, key in DERIVED)}
    known = ["policy" if f.name == "name" and cls is TTAPolicy else f.name for f in dataclasses.fields(cls)]
    tables = {FitConfig: ["model"], ModelConfig: ["train", "augmentation"]}.get(cls, [])
    return [k for k in known if k not in nested] + tables


def _user_error(exc: ValidationError, flagged: set[tuple[str, ...]], where: str, labels: list[str]) -> UserError:
    """The first problem, named as the user wrote it; unknown keys listed by table."""
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")]
    if unknown:
        loc = tuple(str(p) for p in unknown[0]["loc"][:-1])
        keys = sorted(str(e["loc"][-1]) for e in unknown if tuple(str(p) for p in e["loc"][:-1]) == loc)
        if loc[:1] == ("models",):  # inside a [[model]] table: its own keys, or its train/augmentation table's
            inner = loc[2:]
            named = f"{labels[int(loc[1])]}" + (
                "" if not inner else " augmentation" if inner == ("train", "augmentation") else f" {inner[0]}"
            )
            table = inner if inner else ("models",)
            return UserError(f"{named}: unknown setting(s) {keys}; known: {', '.join(_known(table))}")
        named = f" {TOML_NAMES.get(loc, f'[{loc[0]}]')}" if loc else ""
        return UserError(f"{where}{named}: unknown setting(s) {keys}; known: {', '.join(_known(loc))}")
    first = errors[0]
    place = tuple(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if not place or place[-1].isdigit() and place[:-1] == ("models",):  # a check across one table's fields
        return UserError(message if not place else f"{labels[int(place[-1])]}: {message}")
    if first["type"] == "missing":
        return UserError(f"{_name(place, flagged, labels)}: required, and not given")
    if isinstance(first["input"], dict):  # a check across a nested table's fields: its message names them
        table = place[:-1] if place[-1] == "train" else place  # a [[model]] table's train: named by its table
        return UserError(f"{_name(table, flagged, labels) if table else '[train]'}: {message}")
    return UserError(f"{_name(place, flagged, labels)} {first['input']!r}: {message}")


def load_config(path: Path | None, overrides: dict[str, Any]) -> FitConfig:
    """Defaults <- TOML file <- ``overrides`` (command-line values that are not None)."""
    where = f"--config {path}" if path else "settings"
    folder = Path(path).resolve().parent if path else None
    values, flagged, labels = _nest(_read_toml(path), overrides, where, folder)
    try:
        cfg = FitConfig(**values)
    except ValidationError as exc:
        raise _user_error(exc, flagged, where, labels) from None
    validate(cfg, labels)
    return cfg


def validate(cfg: FitConfig, labels: list[str] | None = None) -> None:
    """What the types cannot say: one setting against another, and the models named."""
    labels = labels or [f"model {m.name!r}" for m in cfg.models]
    if cfg.quantize == Quantize.INT8 and cfg.runtime == Runtime.TF:
        raise UserError(
            "--quantize int8: quantizes the exported files, and --runtime tf exports none; use --runtime auto or litert"
        )
    if cfg.final == Final.REFIT and cfg.protocol != Protocol.KFOLD:
        raise UserError("--final refit: only with --protocol kfold (holdout models are already the served ones)")
    most = cfg.tta.max_views(cfg.image_size)
    if cfg.tta.views > most:
        raise UserError(f"--tta {cfg.tta.views}: TTA policy {cfg.tta.name!r} has {most} views")
    for member, label in zip(cfg.models, labels):
        _check_tta_within_augmentation(cfg.tta, member.train.augmentation, label)
        try:
            spec = get_spec(member.architecture)
            if is_custom(member.architecture):
                load_custom_builder(member.architecture)
        except KeyError as exc:
            raise UserError(f"{label}: {exc.args[0]}") from None
        except ValueError as exc:
            raise UserError(f"{label}: {exc}") from None
        if member.image_size < spec.min_image_size:
            raise UserError(
                f"{label} image_size {member.image_size}: {member.architecture} needs at least {spec.min_image_size}"
            )
        file = member.weights_file
        if file is not None and not file.is_file():
            raise UserError(f"{label} weights {member.weights!r}: no such file")
    names = [m.name for m in cfg.models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(
            f'base model name(s) {twice} given twice: give each [[model]] table its own name (name = "...")'
        )


def _check_tta_within_augmentation(tta: TTAPolicy, aug: Augmentation, label: str) -> None:
    """TTA views the models were never trained on hurt more than help: refuse them."""
    if tta.name.flips and not aug.flip:
        raise UserError(
            f"--tta-policy {tta.name}: its views mirror images, but {label} trains with [augmentation] flip = false "
            "(mirroring changes the class, or the model never saw it); use shift, zoom or random"
        )
    if tta.name.shifts and tta.shift > aug.shift:
        raise UserError(f"[tta] shift {tta.shift}: larger than the training augmentation's shift {aug.shift} ({label})")
    if tta.name.zooms and tta.zoom > aug.zoom:
        raise UserError(f"[tta] zoom {tta.zoom}: larger than the training augmentation's zoom {aug.zoom} ({label})")
