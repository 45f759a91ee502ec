"""The bundle's ``manifest.json`` as types: validated on load, so a missing or unknown field is a clear error.

Typed all the way down (an attacker or a typo cannot slip in a key the code would ignore,
and a renamed field fails here, at load, not in some reader later): scores, the meta
selection, the cascade's tuning, the costs' timing and the student's record are models
too. What stays a mapping is keyed by data (base model names, Keras' metric names).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

# 3: meta-learners without pickle (skops), custom modules named, signatures. 4: each base model (and the student) at
# its own image_size, with its weights' sha256; a format 3 bundle reads as one whose models all take its image_size.
FORMAT_VERSION = 4
READABLE_VERSIONS = (3, 4)


class Strict(BaseModel):
    """Unknown keys are refused, every field without a default is required."""

    model_config = ConfigDict(extra="forbid")


class Scores(Strict):
    """Accuracy, log-loss, Brier score and expected calibration error of probabilities (``meta.learners.score``)."""

    accuracy: float
    log_loss: float
    brier: float
    ece: float


class NamedScores(Scores):
    name: str


class ScoreRow(Strict):
    """A leaderboard row (``meta.leaderboard.table_row``): accuracy with its bootstrap 95% interval."""

    name: str
    kind: Literal["base", "candidate", "chosen"]
    accuracy: float
    ci_low: float
    ci_high: float
    log_loss: float
    ece: float


class CandidateRow(Strict):
    """A meta-learner candidate's cross-validated scores over the meta-folds: mean and spread of each."""

    name: str
    family: Literal["simple", "learned"]
    accuracy: float
    accuracy_std: float
    log_loss: float
    log_loss_std: float
    brier: float
    brier_std: float
    ece: float
    ece_std: float
    model_weights: list[float]  # each base model's share of the candidate's answer


class CalibrationScores(Strict):
    log_loss: float
    brier: float
    ece: float


class CalibrationRecord(Strict):
    """Temperature scaling of the chosen stack, its effect cross-validated over the meta-folds."""

    method: Literal["temperature"]
    temperature: float
    before: CalibrationScores
    after: CalibrationScores


class Selection(Strict):
    """How the meta-learner was chosen: every candidate's cross-validated scores, the choice and its reason."""

    kind: str
    criterion: str
    cv_folds: int
    reason: str
    leaderboard: list[CandidateRow]
    calibration: CalibrationRecord | None


class JobRun(Strict):
    """Where one fit job ran and for how long."""

    seconds: float
    worker: str
    threads: int


class Metrics(Strict):
    """The fit's scores and timings."""

    oof_rows: int
    oof: dict[str, Scores]  # each base model's and the plain mean's scores on the OOF rows
    validation: dict[str, list[dict[str, float]]]  # per base model, per fold: the best epoch's val_* (Keras' names)
    fit_seconds: float
    jobs: dict[str, JobRun]
    warnings: list[str] = []  # what the user must know about the members (one answering at chance)


class Seeds(Strict):
    seed: int
    per_model: str  # how each base model's seed follows from it


class ParityEntry(Strict):
    """How closely the exported files agree with Keras on their own OOF images (``stacking.training.export.Parity``)."""

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


class AccuracyLogLoss(Strict):
    accuracy: float
    log_loss: float


class Int8Entry(Strict):
    """The INT8 export's scores against the float32 export's on the model's OOF rows, and the verdict."""

    calibration_images: int
    fp32: AccuracyLogLoss  # of the served views' mean
    int8: AccuracyLogLoss
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
    image_size: int  # its input side: images are resized to it
    preprocessing: str
    weights: str | None  # where its training started: "imagenet", a weights file's name, or None (from scratch)
    weights_sha256: str | None = None  # of the weights file it started from
    files: list[str]  # one .keras file, or one per fold with kfold's fold-average
    history: str
    runtime: RuntimeEntry | None = None  # None: fitted with --runtime tf, or before exports existed


class OptionEntry(Strict):
    """One way of answering (a base model alone, the mean, the stack, the cascade, the student): scores and cost.

    Scores come from rows the option never trained on (``scored_on`` says which); the cost
    is forward passes per image (image-views through base models, fold models counted)
    and milliseconds per image measured through the prediction path on the fitting machine.
    """

    name: str
    kind: Literal["base", "candidate", "chosen", "serving"]
    servable: bool  # --serve-as may name it (stack, cascade, student)
    accuracy: float
    log_loss: float
    rows: int
    scored_on: str
    cost_views: float
    ms_per_image: float | None  # None: not measured (a bundle whose costs were never timed)


class StageEntry(Strict):
    """A cascade stage: ``model`` on its first ``views`` served views answers when its top probability >= threshold."""

    name: str
    model: str | None  # a base model; None: the whole stack (the last stage, which answers everything left)
    views: int
    threshold: float


class CostedScores(Strict):
    accuracy: float
    log_loss: float
    ms_per_image: float
    cost_views: float  # forward passes per image


class CascadeOnOOF(CostedScores):
    """The chosen stages on every OOF row (optimistic: chosen there)."""

    rows: int
    answered_by: dict[str, float]  # share of the rows each stage answered


class CascadeCrossValidated(CostedScores):
    """Each meta-fold's rows answered by the stages chosen on the other folds: the honest estimate."""

    escalated_to_stack: float
    folds: int
    choices: list[list[str]]  # each fold's stages, as chosen on the others


class CascadeTuning(Strict):
    on_oof: CascadeOnOOF
    cross_validated: CascadeCrossValidated
    stack: CostedScores
    candidates_tried: int


class CascadeEntry(Strict):
    stages: list[StageEntry]
    tolerance: float  # the cascade's OOF accuracy may be this far below the stack's
    log_loss_tolerance: float = 0.0  # and its OOF log-loss this far above (bundles before it was a setting: 0)
    tuning: CascadeTuning


class StudentTargets(Strict):
    oof_rows: int
    unlabelled: int
    source: str
    file: str


class StudentScores(Strict):
    """On OOF rows held out from the student: the student, the stack and the best base model alike."""

    rows: int
    scored_on: str
    student: Scores
    stack: Scores
    best_base: NamedScores


class StudentTeaching(Strict):
    """How the student was taught (``stacking distill --teaching``), and what the teaching cost."""

    method: Literal["consistent", "fixed"]
    copies: int  # pictures per taught image (fixed: 1, the plain image)
    mixup: float  # Beta(a, a) of a blend's share (0: none)
    temperature: float
    pictures: int  # the student's training examples
    teacher_passes: int  # forward passes of one network on one view spent answering (fixed: unlabelled images only)
    teacher_seconds: float
    student_seconds: float  # the student's own training, beside the teacher's


class StudentEntry(Strict):
    """A network trained on the stack's honest soft targets (``stacking distill``), served on one view."""

    architecture: str
    image_size: int
    files: list[str]  # the .keras file
    runtime: RuntimeEntry | None  # its exported file, as for base models
    history: str
    targets: StudentTargets  # where the soft targets came from and how many
    scores: StudentScores
    ms_per_image: float  # measured through the student's runner, one view
    teaching: StudentTeaching | None = None  # None: distilled before teaching was recorded


class ServingTiming(Strict):
    """What the costs were measured on (``training.costing.measure_costs``), per image."""

    images: int
    served_views: int
    runtimes: dict[str, str]  # each base model's runtime when timed
    base_ms: dict[str, float]  # each base model on its served views, every fold model
    view_ms: dict[str, float]  # one view through its first (or only) fold model: the cascade's early stages
    stack_ms: float


class ServingEntry(Strict):
    """Every way this bundle can answer, with its cost; and the cascade's and the student's own records."""

    options: list[OptionEntry]
    timing: ServingTiming
    cascade: CascadeEntry | None
    student: StudentEntry | None = None


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
    selection: Selection
    oof_scores: list[ScoreRow]  # base models, candidates and stack on the OOF rows


class Manifest(Strict):
    format_version: Literal[READABLE_VERSIONS] = FORMAT_VERSION
    created: str
    classes: list[str]
    image_size: int  # the fit's default size (format 3: every model's)
    data: DataEntry
    base_models: list[BaseModelEntry]
    meta_learner: MetaLearnerEntry
    tta: TTAEntry
    protocol: ProtocolEntry
    config: dict[str, Any]  # every fit setting, as FitConfig.as_dict() wrote it
    metrics: Metrics
    seeds: Seeds
    versions: dict[str, str]
    custom_modules: list[str]  # modules the base models need imported: only with --trust-custom-code
    files: dict[str, str]  # every file of the bundle but the report and the signature, with its sha256
    serving: ServingEntry | None = None  # None: fitted before cascades and students existed (the stack only)

    @model_validator(mode="before")
    @classmethod
    def _one_size_before_format_4(cls, raw: Any) -> Any:
        """A format 3 bundle's models all take its ``image_size``: say so in each entry, as format 4 does."""
        if not isinstance(raw, dict) or raw.get("format_version") != 3:
            return raw
        size = raw.get("image_size")
        raw = {**raw, "base_models": [_sized(e, size) for e in raw.get("base_models", [])]}
        student = ((raw.get("serving") or {}).get("student")) if isinstance(raw.get("serving"), dict) else None
        if isinstance(student, dict):
            raw["serving"] = {**raw["serving"], "student": _sized(student, size)}
        return raw

    @property
    def sizes(self) -> list[int]:
        """The distinct input sizes of the base models, ascending."""
        return sorted({entry.image_size for entry in self.base_models})


def _sized(entry: Any, size: Any) -> Any:
    return {"image_size": size, **entry} if isinstance(entry, dict) else entry


def validation_message(exc: ValidationError) -> str:
    """Each problem as ``field.path: what is wrong``, the way a user can find it in the file."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        reason = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{field}: {reason}")
    return "; ".join(problems)
