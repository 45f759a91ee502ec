"""Response schemas of the HTTP API (DESIGN.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from stacking.bundle.manifest import (
    CandidateRow,
    Metrics,
    OptionEntry,
    ProtocolEntry,
    RuntimeEntry,
    StageEntry,
    TTAEntry,
)


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


class ErrorResponse(BaseModel):
    error: ErrorBody


class AliveResponse(BaseModel):
    status: Literal["alive"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]


class BaseModelInfo(BaseModel):
    name: str
    architecture: str
    image_size: int  # its input side: each upload is resized to it
    preprocessing: str
    weights: str | None  # where its training started: "imagenet", a weights file's name, or None (from scratch)
    weights_sha256: str | None  # of that weights file
    runtime: RuntimeEntry | None


class MetaLearnerInfo(BaseModel):
    kind: str
    reason: str
    leaderboard: list[CandidateRow]  # each candidate's cross-validated scores on the OOF rows


class ServedTTA(TTAEntry):
    max_views: int  # the most views a request may ask for under this policy


class RunnerInfo(BaseModel):
    runtime: str
    threads: dict[str, int]  # TensorFlow's intra_op and inter_op pools, or LiteRT's num_threads


class RuntimeInfo(BaseModel):
    requested: str
    call_rows: int
    base_models: dict[str, RunnerInfo]


class ServingInfo(BaseModel):
    served_as: str
    latency_budget_ms: float | None
    options: list[OptionEntry]
    cascade: list[StageEntry] | None


class ModelInfoResponse(BaseModel):
    name: str
    version: str
    bundle_sha256: str
    classes: list[str]
    image_sizes: list[int]  # every size an upload is resized to (the base models', or the student's alone)
    base_models: list[BaseModelInfo]
    meta_learner: MetaLearnerInfo
    tta: ServedTTA
    protocol: ProtocolEntry
    metrics: Metrics
    custom_modules: list[str]
    signature_verified: bool
    runtime: RuntimeInfo
    serving: ServingInfo
