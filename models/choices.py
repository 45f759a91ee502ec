"""The choices the models package offers, as enums (light: no Keras), so ``stacking.choices`` lists them with the
rest and the fit config checks them in one place."""

from __future__ import annotations

from enum import StrEnum


class Head(StrEnum):
    GAP = "gap"  # pool, dropout, softmax
    GAP_DENSE = "gap-dense"  # adds a hidden dense + BatchNorm layer


class ClassWeight(StrEnum):
    NONE = "none"
    BALANCED = "balanced"  # each class weighed by n / (classes x its count)
