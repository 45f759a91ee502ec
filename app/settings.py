"""Service settings: ``STACKSERVE_*`` environment variables, or ``stacking serve`` flags of the same names."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stacking.bundle import Trust
from stacking.choices import AUTO, RUNTIME, ServeAs


class Settings(BaseSettings):
    # A variable set but empty (as ``docker run -e NAME`` leaves it) counts as unset: STACKSERVE_GRPC_PORT= is gRPC off.
    model_config = SettingsConfigDict(env_prefix="STACKSERVE_", env_ignore_empty=True)

    bundle: Path = Path("/bundle")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535)  # the Open Inference Protocol over gRPC; off when unset
    # Dynamic batching: images per model call, and how long a batch may wait for requests still being decoded.
    max_batch: int = Field(64, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    call_rows: int = Field(64, ge=1)  # image-views per compiled call: one padded shape (see TTAForward)
    queue_size: int = Field(64, ge=1)  # jobs waiting for the models; past it, 503 with Retry-After
    request_timeout_s: float = Field(30.0, gt=0)  # a job still queued after this is dropped (503)
    max_tta: int = Field(16, ge=0)  # most TTA views a request may ask for (the bundle's policy may allow fewer)
    max_files: int = Field(64, ge=1)  # images per request
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)  # per image; larger ones are refused as decompression bombs
    api_key: str = ""  # when set, /v1 and /v2 model routes need header X-API-Key (health, metrics, page stay open)
    cors_origins: list[str] = []  # origins allowed to call the API from a browser; empty: CORS off
    decode_threads: int = Field(0, ge=0)  # threads decoding uploads (0: one per core)
    serve_as: ServeAs = ServeAs.STACK  # how the bundle answers (stacking.inference.options)
    latency_budget_ms: float | None = Field(None, gt=0)  # instead: the most accurate option whose cost fits
    runtime: Literal[RUNTIME.allowed] = AUTO  # where the base models run: auto (as the fit chose per model), tf, litert
    runtime_threads: int = Field(0, ge=0)  # the exported runtime's threads per call (0: one per core)
    intra_op_threads: int = Field(0, ge=0)  # TensorFlow threads inside one op (0: TensorFlow's default)
    inter_op_threads: int = Field(0, ge=0)  # TensorFlow ops run side by side (0: TensorFlow's default)
    graceful_timeout_s: float = Field(30.0, ge=0)  # on SIGTERM, how long requests in flight may take to finish
    warm_up_views: bool = True  # compile every TTA view count up to max_tta before turning ready
    trust_custom_code: bool = False  # import the modules a bundle's own architectures come from (runs their code)
    verify_key: Path | None = None  # public key (PEM): refuse a bundle not signed with its private key

    @property
    def trust(self) -> Trust:
        return Trust(custom_code=self.trust_custom_code, verify_key=self.verify_key)
