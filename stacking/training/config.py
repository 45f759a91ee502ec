"""Fit settings: defaults, overridden by a TOML file, overridden by command-line options.

Every key is checked against the dataclasses below, so a misspelt option in the
file is an error naming it, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from models.registry import get_spec, is_custom, load_custom_builder
from models.training import Augmentation, TrainConfig
from stacking.choices import (
    CLASS_WEIGHT,
    FINAL,
    HEAD,
    ON_BAD_IMAGE,
    PROTOCOL,
    QUANTIZE,
    RUNTIME,
    TTA_MERGE,
    TTA_POLICY,
    WEIGHTS,
    Final,
    Protocol,
    Quantize,
    Runtime,
    TTAPolicyName,
)
from stacking.errors import UserError
from stacking.inference.tta import TTAPolicy
from stacking.training.executors import ClusterConfig
from stacking.training.meta_step import MetaSettings

DEFAULT_MODELS = ("tiny_cnn", "small_resnet", "mini_mobilenet")


@dataclass(frozen=True)
class FitConfig:
    models: tuple[str, ...] = DEFAULT_MODELS
    protocol: str = "holdout"
    folds: int = 5
    holdout_fraction: float = 0.2
    validation_fraction: float = 0.1
    # A column of DIR/train.csv (or DIR/groups.csv: Id,<column>) whose images stay on one side of every split.
    group_column: str = ""
    final: str = "fold-average"  # kfold's served models: the K fold models (stacked per fold, averaged), or "refit"
    meta: str = "auto"
    meta_criterion: str = "log_loss"  # how candidates are ranked: "log_loss" (lower) or "accuracy" (higher)
    meta_folds: int = 5  # cross-validation folds over the OOF rows that rank the candidates
    tta_features: bool = False  # also give the meta-learner each model's TTA entropy and view disagreement
    calibration: str = "none"  # "temperature": scale the chosen output, fitted on OOF rows only
    image_size: int = 32
    # ImageNet weights for keras.applications families (downloaded once to ~/.keras/models);
    # "none" trains them from scratch. Built-in architectures always start from scratch.
    weights: str = "imagenet"
    seed: int = 0
    on_bad_image: str = "error"
    head: str = "gap"  # "gap": pool, dropout, softmax; "gap-dense" adds a hidden dense + BatchNorm layer
    dropout: float = 0.2
    deterministic: bool = True  # deterministic TensorFlow ops: the same seed gives the same weights
    mixed_precision: bool = False  # float16 compute, for GPU users; off on CPU
    # Where the base models are served and their OOF rows computed: "auto" exports each to LiteRT and serves it
    # there unless TensorFlow is faster; "litert" fails the fit if a model cannot be exported; "tf" exports nothing.
    runtime: str = "auto"
    # "int8": also quantize each export (static, calibrated on training images); served only where, on the model's
    # OOF rows, accuracy does not drop and log-loss rises by at most stacking.training.export.INT8_LOG_LOSS_TOLERANCE.
    quantize: str = "none"
    tta_diagnostic_views: int = 10  # views measured for the TTA diagnostics (at most the policy's)
    tta: TTAPolicy = field(default_factory=TTAPolicy)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # where the jobs run: [cluster] in the file

    def weights_for(self, model: str) -> str | None:
        """Pretrained weights for ``model``: keras.applications families only."""
        spec = get_spec(model)
        return None if spec.builtin or is_custom(model) or self.weights == "none" else self.weights

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "models": list(self.models), "tta": self.tta.as_dict()}


def _build(cls: type, values: dict[str, Any], where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown setting(s) {unknown}; known: {', '.join(known)}")
    return cls(**values)


def load_config(path: Path | None, overrides: dict[str, Any]) -> FitConfig:
    """Defaults <- TOML file <- ``overrides`` (command-line values that are not None)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"--config {path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"--config {path}: not valid TOML ({exc})") from None
    where = f"--config {path}" if path else "settings"
    tta = dict(raw.pop("tta", {}))
    train = dict(raw.pop("train", {}))
    augmentation = dict(raw.pop("augmentation", {}))
    cluster = dict(raw.pop("cluster", {}))
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("executor", "ray_address"):
            cluster["executor" if key == "executor" else "address"] = value
        elif key in ("tta_views", "tta_policy"):
            tta["views" if key == "tta_views" else "name"] = value
        elif key == "epochs":
            train["epochs"] = value
        else:
            raw[key] = value
    if "policy" in tta:
        tta["name"] = tta.pop("policy")
    if "models" in raw:
        raw["models"] = tuple(raw["models"])
    cfg = _build(FitConfig, raw, where)
    if "allow_flip" in tta:
        raise UserError(f"{where} [tta]: allow_flip follows [augmentation] flip; set that instead")
    aug = _build(Augmentation, augmentation, f"{where} [augmentation]")
    cfg = dataclasses.replace(
        cfg,
        tta=_build(TTAPolicy, {**tta, "allow_flip": aug.flip}, f"{where} [tta]"),
        train=_build(TrainConfig, {**train, "augmentation": aug}, f"{where} [train]"),
        cluster=_build(ClusterConfig, cluster, f"{where} [cluster]"),
    )
    validate(cfg)
    return cfg


def validate(cfg: FitConfig) -> None:
    """Refuse settings that cannot work, naming the option."""
    for choice, value in (
        (PROTOCOL, cfg.protocol),
        (FINAL, cfg.final),
        (TTA_POLICY, cfg.tta.name),
        (TTA_MERGE, cfg.tta.merge),
        (ON_BAD_IMAGE, cfg.on_bad_image),
        (WEIGHTS, cfg.weights),
        (RUNTIME, cfg.runtime),
        (QUANTIZE, cfg.quantize),
        (HEAD, cfg.head),
        (CLASS_WEIGHT, cfg.train.class_weight),
    ):
        choice.check(value)
    checks = [
        (
            cfg.quantize == Quantize.NONE or cfg.runtime != Runtime.TF,
            "--quantize int8: quantizes the exported files, and "
            "--runtime tf exports none; use --runtime auto or litert",
        ),
        (
            cfg.final == Final.FOLD_AVERAGE or cfg.protocol == Protocol.KFOLD,
            "--final refit: only with --protocol kfold (holdout models are already the served ones)",
        ),
        (cfg.tta.adaptive_views >= 0, f"[tta] adaptive_views {cfg.tta.adaptive_views}: must be 0 (off) or more"),
        (cfg.tta.views >= 0, f"--tta {cfg.tta.views}: must be 0 or more"),
        (cfg.tta_diagnostic_views >= 1, f"tta_diagnostic_views {cfg.tta_diagnostic_views}: must be at least 1"),
        (cfg.folds >= 2, f"--folds {cfg.folds}: must be at least 2"),
        (0 < cfg.holdout_fraction < 1, f"holdout_fraction {cfg.holdout_fraction}: must be between 0 and 1"),
        (0 < cfg.validation_fraction < 1, f"validation_fraction {cfg.validation_fraction}: must be between 0 and 1"),
        (cfg.train.epochs >= 1, f"--epochs {cfg.train.epochs}: must be at least 1"),
        (len(cfg.models) >= 1, "--models: name at least one model"),
        (0 <= cfg.dropout < 1, f"dropout {cfg.dropout}: must be in [0, 1)"),
        (
            cfg.train.head_epochs >= 0 and cfg.train.fine_tune_blocks >= 0,
            "head_epochs and fine_tune_blocks: must be 0 or more",
        ),
        (
            cfg.train.reduce_lr_patience < cfg.train.early_stopping_patience,
            f"[train] reduce_lr_patience {cfg.train.reduce_lr_patience}: must be below early_stopping_patience "
            f"{cfg.train.early_stopping_patience}, or training stops before the learning rate ever drops",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    MetaSettings.from_config(dataclasses.asdict(cfg)).check()
    cfg.cluster.check()
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
    policy = TTAPolicyName(tta.name)
    if policy.flips and not aug.flip:
        raise UserError(
            f"--tta-policy {tta.name}: its views mirror images, but [augmentation] flip = false (mirroring changes "
            "the class, or the models never saw it); use shift, zoom or random"
        )
    if policy.shifts and tta.shift > aug.shift:
        raise UserError(f"[tta] shift {tta.shift}: larger than the training augmentation's shift {aug.shift}")
    if policy.zooms and tta.zoom > aug.zoom:
        raise UserError(f"[tta] zoom {tta.zoom}: larger than the training augmentation's zoom {aug.zoom}")
    if tta.identity_weight <= 0:
        raise UserError(f"[tta] identity_weight {tta.identity_weight}: must be above 0")
