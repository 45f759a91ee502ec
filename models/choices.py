"""The choices the models package offers, as enums (light: no Keras), so ``stacking.choices`` lists them with the
rest and the fit config checks them in one place."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict

# Settings classes are pydantic dataclasses with this config: a misspelt key is an error naming it, never ignored;
# each field's docstring is its description, which the manual's configuration reference is generated from.
STRICT = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Named(StrEnum):
    """A choice's value: prints, formats and reprs as its string ('flip'), as the user wrote it."""

    def __repr__(self) -> str:
        return repr(self.value)


class Head(Named):
    GAP = "gap"  # pool, dropout, softmax
    GAP_DENSE = "gap-dense"  # adds a hidden dense + BatchNorm layer


class ClassWeight(Named):
    NONE = "none"
    BALANCED = "balanced"  # each class weighed by n / (classes x its count)


class FineTuneSchedule(Named):
    """How a pretrained backbone is unfrozen (``[train] fine_tune_schedule``)."""

    PHASED = "phased"  # the head on the frozen backbone, then the top fine_tune_blocks blocks at once
    GRADUAL = "gradual"  # the head, then one more top block per phase, up to fine_tune_blocks
    FULL = "full"  # every layer from the first epoch, at fine_tune_learning_rate


class BatchNormMomentum(Named):
    """The momentum of BatchNormalization layers that train (``[train] batchnorm_momentum``)."""

    MATCHED = "matched"  # lowered so the moving statistics forget their start within one epoch (never below 0.9)
    BUILDER = "builder"  # as the architecture's builder set it (keras.applications: 0.99, MobileNets 0.999)
