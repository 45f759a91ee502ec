"""The choices the models package offers, as enums (light: no Keras), so ``stacking.choices`` lists them with the
rest and the fit config checks them in one place."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict

# Settings classes are pydantic dataclasses with this config: a misspelt key is an error naming it, never ignored.
STRICT = ConfigDict(extra="forbid")


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
