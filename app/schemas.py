"""Response schemas of the HTTP API (DESIGN.md)."""

from __future__ import annotations

from pydantic import BaseModel


class ModelRef(BaseModel):
    name: str
    version: str


class TTAInfo(BaseModel):
    iterations: int
    agreement: float


class ErrorBody(BaseModel):
    code: str
    message: str


class ImagePrediction(BaseModel):
    filename: str
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    tta: TTAInfo | None = None
    base_models: dict[str, dict[str, float]] | None = None  # those that ran on the image (the cascade may stop early)
    served_by: str | None = None  # "stack", "student" or "cascade/<stage>"
    cost_views: float | None = None  # forward passes spent on the image
    error: ErrorBody | None = None  # set, instead of the fields above, for a file that could not be used


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[ImagePrediction]
