"""Fit settings: defaults, overridden by a TOML file, overridden by command-line options.

One typed model (pydantic dataclasses, ``extra="forbid"``): each field's type and bounds are
its check, each choice is its enum (``stacking.choices``), nested tables are the training,
augmentation, TTA and cluster settings. So a misspelt key or a value out of range is an
error naming the flag, or the TOML table and key, before any work starts; what the types
cannot say (one setting against another) is checked after, in :func:`validate`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from models.choices import STRICT, Head
from models.registry import get_spec, is_custom, load_custom_builder
from models.training import Augmentation, TrainConfig
from stacking.choices import (
    AUTO,
    META,
    RUNTIME,
    Calibration,
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
from stacking.training.executors import ClusterConfig

DEFAULT_MODELS = ("tiny_cnn", "small_resnet", "mini_mobilenet")


@dataclass(frozen=True, config=STRICT)
class FitConfig:
    models: tuple[str, ...] = Field(DEFAULT_MODELS, min_length=1)
    protocol: Protocol = Protocol.HOLDOUT
    folds: int = Field(5, ge=2)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    # A column of DIR/train.csv (or DIR/groups.csv: Id,<column>) whose images stay on one side of every split.
    group_column: str = ""
    final: Final = Final.FOLD_AVERAGE  # kfold's served models: the K fold models (stacked per fold, averaged), or refit
    meta: Literal[META.allowed] = AUTO  # auto: the candidate cross-validation ranks first (a stack must win)
    meta_criterion: MetaCriterion = MetaCriterion.LOG_LOSS  # how candidates are ranked: log_loss (lower), accuracy
    meta_folds: int = Field(5, ge=2)  # cross-validation folds over the OOF rows that rank the candidates
    tta_features: bool = False  # also give the meta-learner each model's TTA entropy and view disagreement
    calibration: Calibration = Calibration.NONE  # temperature: scale the chosen output, fitted on OOF rows only
    image_size: int = Field(32, ge=1)
    # ImageNet weights for keras.applications families (downloaded once to ~/.keras/models);
    # "none" trains them from scratch. Built-in architectures always start from scratch.
    weights: Weights = Weights.IMAGENET
    seed: int = 0
    on_bad_image: OnBadImage = OnBadImage.ERROR
    head: Head = Head.GAP  # gap: pool, dropout, softmax; gap-dense adds a hidden dense + BatchNorm layer
    dropout: float = Field(0.2, ge=0, lt=1)
    deterministic: bool = True  # deterministic TensorFlow ops: the same seed gives the same weights
    mixed_precision: bool = False  # float16 compute, for GPU users; off on CPU
    # Where the base models are served and their OOF rows computed: "auto" exports each to LiteRT and serves it
    # there unless TensorFlow is faster; "litert" fails the fit if a model cannot be exported; "tf" exports nothing.
    runtime: Literal[RUNTIME.allowed] = AUTO
    # "int8": also quantize each export (static, calibrated on training images); served only where, on the model's
    # OOF rows, accuracy does not drop and log-loss rises by at most stacking.training.export.INT8_LOG_LOSS_TOLERANCE.
    quantize: Quantize = Quantize.NONE
    tta_diagnostic_views: int = Field(10, ge=1)  # views measured for the TTA diagnostics (at most the policy's)
    tta: TTAPolicy = TTAPolicy()
    train: TrainConfig = TrainConfig()
    cluster: ClusterConfig = ClusterConfig()  # where the jobs run: [cluster] in the file

    def weights_for(self, model: str) -> str | None:
        """Pretrained weights for ``model``: keras.applications families only."""
        spec = get_spec(model)
        return None if spec.builtin or is_custom(model) or self.weights == Weights.NONE else str(self.weights)

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


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path}: not valid TOML ({exc})") from None


def _nest(raw: dict[str, Any], overrides: dict[str, Any], where: str) -> tuple[dict[str, Any], set[tuple[str, ...]]]:
    """The file's tables as the model nests them ([augmentation] inside [train], [tta] policy as the policy's
    name), with the command line's values on top; and the places the command line set."""
    values = dict(raw)
    tta = dict(values.pop("tta", {}))
    if "allow_flip" in tta:
        raise UserError("[tta] allow_flip follows [augmentation] flip; set that instead")
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
    tta["allow_flip"] = augmentation.get("flip", True)  # random TTA views mirror only if training did
    return {**values, **tables}, flagged


def _name(place: tuple[str, ...], flagged: set[tuple[str, ...]]) -> str:
    """A setting as the user gave it: its flag, or its TOML table and key."""
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
    }[table]
    nested = {"tta", "train", "cluster", "augmentation", "allow_flip"}
    return ["policy" if f.name == "name" else f.name for f in dataclasses.fields(cls) if f.name not in nested]


def _user_error(exc: ValidationError, flagged: set[tuple[str, ...]], where: str) -> UserError:
    """The first problem, named as the user wrote it; unknown keys listed by table."""
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")]
    if unknown:
        table = tuple(str(p) for p in unknown[0]["loc"][:-1])
        keys = sorted(str(e["loc"][-1]) for e in unknown if tuple(str(p) for p in e["loc"][:-1]) == table)
        named = f" {TOML_NAMES.get(table, f'[{table[0]}]')}" if table else ""
        return UserError(f"{where}{named}: unknown setting(s) {keys}; known: {', '.join(_known(table))}")
    first = errors[0]
    place = tuple(str(p) for p in first["loc"] if not isinstance(p, int))
    message = first["msg"].removeprefix("Value error, ")
    if not place:  # a check across fields inside one table: its message names the settings
        return UserError(message)
    return UserError(f"{_name(place, flagged)} {first['input']!r}: {message}")


def load_config(path: Path | None, overrides: dict[str, Any]) -> FitConfig:
    """Defaults <- TOML file <- ``overrides`` (command-line values that are not None)."""
    where = f"--config {path}" if path else "settings"
    values, flagged = _nest(_read_toml(path), overrides, where)
    try:
        cfg = FitConfig(**values)
    except ValidationError as exc:
        raise _user_error(exc, flagged, where) from None
    validate(cfg)
    return cfg


def validate(cfg: FitConfig) -> None:
    """What the types cannot say: one setting against another, and the models named."""
    if cfg.quantize == Quantize.INT8 and cfg.runtime == Runtime.TF:
        raise UserError(
            "--quantize int8: quantizes the exported files, and --runtime tf exports none; use --runtime auto or litert"
        )
    if cfg.final == Final.REFIT and cfg.protocol != Protocol.KFOLD:
        raise UserError("--final refit: only with --protocol kfold (holdout models are already the served ones)")
    _check_tta_within_augmentation(cfg.tta, cfg.train.augmentation)
    most = cfg.tta.max_views(cfg.image_size)
    if cfg.tta.views > most:
        raise UserError(f"--tta {cfg.tta.views}: TTA policy {cfg.tta.name!r} has {most} views")
    for name in cfg.models:
        try:
            spec = get_spec(name)
            if is_custom(name):
                load_custom_builder(name)
        except KeyError as exc:
            raise UserError(f"--models: {exc.args[0]}") from None
        except ValueError as exc:
            raise UserError(f"--models: {exc}") from None
        if cfg.image_size < spec.min_image_size:
            raise UserError(f"--image-size {cfg.image_size}: model {name!r} needs at least {spec.min_image_size}")
    if len(set(cfg.models)) != len(cfg.models):
        raise UserError(f"--models: a model is named twice in {list(cfg.models)}")


def _check_tta_within_augmentation(tta: TTAPolicy, aug: Augmentation) -> None:
    """TTA views the models were never trained on hurt more than help: refuse them."""
    if tta.name.flips and not aug.flip:
        raise UserError(
            f"--tta-policy {tta.name}: its views mirror images, but [augmentation] flip = false (mirroring changes "
            "the class, or the models never saw it); use shift, zoom or random"
        )
    if tta.name.shifts and tta.shift > aug.shift:
        raise UserError(f"[tta] shift {tta.shift}: larger than the training augmentation's shift {aug.shift}")
    if tta.name.zooms and tta.zoom > aug.zoom:
        raise UserError(f"[tta] zoom {tta.zoom}: larger than the training augmentation's zoom {aug.zoom}")
