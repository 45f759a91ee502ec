"""The bundle's ``manifest.json`` as types: validated on load, so a missing or unknown field is a clear error.

Structure is typed field by field (an attacker or a typo cannot slip in a key the code
would ignore); the free-form records inside (scores, the fit's settings, the meta
selection's leaderboard) are kept as JSON objects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

FORMAT_VERSION = 3  # 3: meta-learners without pickle (skops), custom modules named, signatures


class Strict(BaseModel):
    """Unknown keys are refused, every field without a default is required."""

    model_config = ConfigDict(extra="forbid")


class ParityEntry(Strict):
    """How closely the exported files agree with Keras on their own OOF images (``stacking.export.Parity``)."""

    rows: int
    max_abs_diff: float
    label_changes: int
    max_abs_limit: float


class TimingEntry(Strict):
    """Milliseconds per call of the whole base model at the served call shape, the runtimes side by side."""

    call_rows: int
    tf_ms: float
    litert_ms: float
    litert_int8_ms: float | None = None  # with --quantize int8


class Int8Entry(Strict):
    """The INT8 export's scores against the float32 export's on the model's OOF rows, and the verdict."""

    calibration_images: int
    fp32: dict[str, float]  # accuracy and log-loss of the served views' mean
    int8: dict[str, float]
    log_loss_tolerance: float
    kept: bool  # scores held: INT8 may serve
    reason: str


class RuntimeEntry(Strict):
    """A base model's exported files and the runtime that serves it (``--runtime auto``)."""

    name: Literal["litert"]
    files: list[str]  # beside the .keras files, in their order; none when the export was refused
    served: Literal["tf", "litert"]  # the OOF rows are this runtime's answers
    parity: ParityEntry | None  # None when the conversion itself failed
    timing: TimingEntry | None
    refused: str | None  # why the export is not used
    precision: Literal["fp32", "int8"] = "fp32"  # of the files listed (what serves when served is litert)
    int8: Int8Entry | None = None  # with --quantize int8


class BaseModelEntry(Strict):
    name: str
    architecture: str  # a registered architecture, or pkg.module:function for your own
    preprocessing: str
    weights: str | None
    files: list[str]  # one .keras file, or one per fold with kfold's fold-average
    history: str
    runtime: RuntimeEntry | None = None  # None: fitted with --runtime tf, or before exports existed


class DataEntry(Strict):
    source: str
    images: int
    per_class: dict[str, int]
    skipped: list[str]


class ProtocolEntry(Strict):
    name: Literal["holdout", "kfold"]
    holdout_fraction: float | None
    folds: int | None
    validation_fraction: float
    group_column: str | None
    fold_file: str
    fold_hash: str
    final_models: Literal["holdout-trained", "fold-average", "refit"]


class TTAEntry(Strict):
    """``TTAPolicy.as_dict()``: the served TTA policy, as validated by the fit."""

    policy: str
    views: int
    shift: float
    zoom: float
    seed: int
    allow_flip: bool
    merge: str
    identity_weight: float
    adaptive_views: int
    adaptive_margin: float


class MetaFeatures(Strict):
    layout: str
    tta_features: bool
    base_models: list[str]
    n_classes: int


class MetaLearnerEntry(Strict):
    kind: str
    file: str
    candidates_file: str
    features: MetaFeatures
    selection: dict[str, Any]  # leaderboard over the meta-folds, the choice and its reason
    oof_scores: list[dict[str, Any]]  # base models, candidates and stack on the OOF rows


class Manifest(Strict):
    format_version: Literal[3] = FORMAT_VERSION
    created: str
    classes: list[str]
    image_size: int
    data: DataEntry
    base_models: list[BaseModelEntry]
    meta_learner: MetaLearnerEntry
    tta: TTAEntry
    protocol: ProtocolEntry
    config: dict[str, Any]  # every fit setting, as FitConfig.as_dict() wrote it
    metrics: dict[str, Any]  # OOF and validation scores, fit seconds, where each job ran
    seeds: dict[str, Any]
    versions: dict[str, str]
    custom_modules: list[str]  # modules the base models need imported: only with --trust-custom-code
    files: dict[str, str]  # every file of the bundle but the report and the signature, with its sha256


def validation_message(exc: ValidationError) -> str:
    """Each problem as ``field.path: what is wrong``, the way a user can find it in the file."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        reason = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{field}: {reason}")
    return "; ".join(problems)
