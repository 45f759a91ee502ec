"""Every named choice and its allowed values, in one table: one ``StrEnum`` per choice, which the fit config, the
CLI's help and checks, the service's settings and the code's comparisons all use.

Imports nothing heavy, so ``stacking --help`` lists the values without loading TensorFlow.
A check's error names the option as the user spelt it (``--tta-policy``, ``[tta] merge``).
A member equals its string (``Protocol.HOLDOUT == "holdout"``), so manifests and files keep plain strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from models.choices import BatchNormMomentum, ClassWeight, FineTuneSchedule, Head, Named
from stacking.errors import UserError


class Protocol(Named):
    HOLDOUT = "holdout"
    KFOLD = "kfold"


class Final(Named):
    """kfold's served models: the K fold models (stacked per fold, averaged), or one refit on every image."""

    FOLD_AVERAGE = "fold-average"
    REFIT = "refit"


class TTAPolicyName(Named):
    NONE = "none"
    FLIP = "flip"
    SHIFT = "shift"
    FLIP_SHIFT = "flip-shift"
    ZOOM = "zoom"
    RANDOM = "random"

    @property
    def flips(self) -> bool:
        """Its views mirror images."""
        return self in (TTAPolicyName.FLIP, TTAPolicyName.FLIP_SHIFT)

    @property
    def shifts(self) -> bool:
        return self in (TTAPolicyName.SHIFT, TTAPolicyName.FLIP_SHIFT, TTAPolicyName.ZOOM, TTAPolicyName.RANDOM)

    @property
    def zooms(self) -> bool:
        return self in (TTAPolicyName.ZOOM, TTAPolicyName.RANDOM)


class TTAMerge(Named):
    MEAN = "mean"  # of probabilities
    GEOMETRIC = "geometric"  # mean of log-probabilities


class MetaKind(Named):
    """Candidates, simplest first: the first four average base models, the last two learn a stack."""

    BEST_SINGLE = "best-single"
    MEAN = "mean"
    WEIGHTED = "weighted"
    CARUANA = "caruana"
    LOGREG = "logreg"
    RF = "rf"

    @property
    def learned(self) -> bool:
        return self in (MetaKind.LOGREG, MetaKind.RF)


AUTO = "auto"  # --meta and --runtime: let the fit's measurements choose


class MetaCriterion(Named):
    LOG_LOSS = "log_loss"  # lower is better
    ACCURACY = "accuracy"  # higher is better


class Calibration(Named):
    NONE = "none"
    TEMPERATURE = "temperature"


class Executor(Named):
    LOCAL = "local"
    RAY = "ray"


class OnBadImage(Named):
    ERROR = "error"
    SKIP = "skip"


class Weights(Named):
    IMAGENET = "imagenet"
    NONE = "none"


class Quantize(Named):
    NONE = "none"
    INT8 = "int8"  # post-training static, kept only where OOF scores hold


class Precision(Named):
    """What an exported base model's files hold (``--quantize int8`` adds INT8 files where they hold)."""

    FP32 = "fp32"
    INT8 = "int8"


class ServeAs(Named):
    """How a bundle answers (``stacking.inference.options``)."""

    STACK = "stack"
    CASCADE = "cascade"
    STUDENT = "student"


class TeachingMethod(Named):
    """How ``stacking distill`` teaches (``stacking.training.teaching``)."""

    CONSISTENT = "consistent"  # the stack answers the very augmented, blended pictures the student sees
    FIXED = "fixed"  # one answer per image, on the plain image, while the student sees augmented ones (the old way)


class Runtime(Named):
    """Where base models run (``stacking.runtime``)."""

    TF = "tf"
    LITERT = "litert"


@dataclass(frozen=True)
class Choice:
    """A choice as the user meets it: the option's name and the enum of its values."""

    option: str  # how the user names it: a flag, or a config key
    family: type[StrEnum]
    extra: tuple[str, ...] = ()  # also accepted, not a member of the family (meta's "auto")

    @property
    def values(self) -> tuple[str, ...]:
        """Plain strings: what files and estimators store (a member would carry its enum type into them)."""
        return tuple(member.value for member in self.family)

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.extra + self.values

    def check(self, value: str) -> str:
        """``value`` as the family's member (or one of the extras as given); otherwise an error naming the option."""
        if value in self.extra:
            return value
        try:
            return self.family(value)
        except ValueError:
            raise UserError(f"{self.option} {value!r}: expected one of {', '.join(self.allowed)}") from None

    def help(self, text: str) -> str:
        """``text`` with the allowed values listed, for the CLI help."""
        return f"{text} One of: {', '.join(self.allowed)}."


PROTOCOL = Choice("--protocol", Protocol)
FINAL = Choice("--final", Final)
TTA_POLICY = Choice("--tta-policy", TTAPolicyName)
TTA_MERGE = Choice("[tta] merge", TTAMerge)
META = Choice("--meta", MetaKind, extra=(AUTO,))
META_CRITERION = Choice("--meta-criterion", MetaCriterion)
CALIBRATION = Choice("--calibration", Calibration)
EXECUTOR = Choice("--executor", Executor)
ON_BAD_IMAGE = Choice("--on-bad-image", OnBadImage)
QUANTIZE = Choice("--quantize", Quantize)
SERVE_AS = Choice("--serve-as", ServeAs)
TEACHING = Choice("--teaching", TeachingMethod)
RUNTIME = Choice("--runtime", Runtime, extra=(AUTO,))
HEAD = Choice("head", Head)
CLASS_WEIGHT = Choice("[train] class_weight", ClassWeight)
FINE_TUNE_SCHEDULE = Choice("[train] fine_tune_schedule", FineTuneSchedule)
BATCHNORM_MOMENTUM = Choice("[train] batchnorm_momentum", BatchNormMomentum)

# The families' members by the names the code uses.
POLICIES, MERGES, META_KINDS = TTA_POLICY.values, TTA_MERGE.values, META.values
SIMPLE_META = tuple(k.value for k in MetaKind if not k.learned)  # averages of base models
LEARNED_META = tuple(k.value for k in MetaKind if k.learned)  # learned stacks
