"""Every named choice and its allowed values, in one table: the config, the CLI help and the service read it.

Imports nothing heavy, so ``stacking --help`` lists the values without loading TensorFlow.
A check's error names the option as the user spelt it (``--tta-policy``, ``[tta] merge``).
"""

from __future__ import annotations

from dataclasses import dataclass

from stacking.errors import UserError


@dataclass(frozen=True)
class Choice:
    option: str  # how the user names it: a flag, or a config key
    values: tuple[str, ...]
    extra: tuple[str, ...] = ()  # also accepted, not a member of the family (meta's "auto")

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.extra + self.values

    def check(self, value: str) -> str:
        if value not in self.allowed:
            raise UserError(f"{self.option} {value!r}: expected one of {', '.join(self.allowed)}")
        return value

    def help(self, text: str) -> str:
        """``text`` with the allowed values listed, for the CLI help."""
        return f"{text} One of: {', '.join(self.allowed)}."


PROTOCOL = Choice("--protocol", ("holdout", "kfold"))
FINAL = Choice("--final", ("fold-average", "refit"))  # kfold's served models
TTA_POLICY = Choice("--tta-policy", ("none", "flip", "shift", "flip-shift", "zoom", "random"))
TTA_MERGE = Choice("[tta] merge", ("mean", "geometric"))
META = Choice("--meta", ("best-single", "mean", "weighted", "caruana", "logreg", "rf"), extra=("auto",))
META_CRITERION = Choice("--meta-criterion", ("log_loss", "accuracy"))
CALIBRATION = Choice("--calibration", ("none", "temperature"))
EXECUTOR = Choice("--executor", ("local", "ray"))
ON_BAD_IMAGE = Choice("--on-bad-image", ("error", "skip"))
WEIGHTS = Choice("--weights", ("imagenet", "none"))
QUANTIZE = Choice("--quantize", ("none", "int8"))  # int8: post-training static, kept only where OOF scores hold
SERVE_AS = Choice("--serve-as", ("stack", "cascade", "student"))  # how a bundle answers (stacking.training.costing)
RUNTIME = Choice("--runtime", ("tf", "litert"), extra=("auto",))  # where base models run (stacking.runtime)

# The families' members by the names the code uses.
POLICIES, MERGES, META_KINDS = TTA_POLICY.values, TTA_MERGE.values, META.values
SIMPLE_META, LEARNED_META = META_KINDS[:4], META_KINDS[4:]  # averages of base models; learned stacks
