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
    # Each field's docstring is its description: the manual's service reference is generated from them.
    model_config = SettingsConfigDict(env_prefix="STACKSERVE_", env_ignore_empty=True, use_attribute_docstrings=True)

    bundle: Path = Path("/bundle")
    """The bundle folder to serve (``stacking serve BUNDLE``)."""
    host: str = "127.0.0.1"
    """The address ``stacking serve`` listens on (0.0.0.0: every interface, as a container does)."""
    port: int = Field(8000, ge=0, le=65535)
    """The HTTP port."""
    grpc_port: int | None = Field(None, ge=0, le=65535)
    """Also serve the Open Inference Protocol over gRPC on this port, same host; off when unset."""
    max_batch: int = Field(64, ge=1)
    """Images per model call; a larger request is split, not refused (1 turns batching off)."""
    max_wait_ms: float = Field(5.0, ge=0)
    """Most a batch waits for requests still being decoded (never when none is on the way)."""
    call_rows: int = Field(64, ge=1)
    """Image-views per compiled model call: one padded shape (see Speed and runtimes)."""
    queue_size: int = Field(64, ge=1)
    """Jobs (of up to max_batch images) that may wait; past it, 503 with Retry-After."""
    request_timeout_s: float = Field(30.0, gt=0)
    """A job still queued after this is dropped before the models (503 deadline_exceeded)."""
    max_tta: int = Field(16, ge=0)
    """Most TTA views a request may ask for (the bundle's policy may allow fewer)."""
    max_files: int = Field(64, ge=1)
    """Images per request (413 past it)."""
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    """Largest request body, also when streamed without a length or gzip-inflated for /v2 (413)."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Pixels per image; more is refused as a decompression bomb (400)."""
    api_key: str = ""
    """When set, /v1/* and /v2/models/* need header X-API-Key (gRPC: metadata x-api-key on ModelMetadata and
    ModelInfer); health, metrics and the page stay open."""
    cors_origins: list[str] = []
    """A JSON list of origins allowed to call the API from a browser; empty: CORS off."""
    decode_threads: int = Field(0, ge=0)
    """Threads decoding uploads (0: one per core)."""
    serve_as: ServeAs = ServeAs.STACK
    """Which option answers: stack, cascade (cheap stages first, the stack for what they are unsure of) or student
    (refused at start if the bundle has none)."""
    latency_budget_ms: float | None = Field(None, gt=0)
    """Instead of serve_as, the most accurate option whose measured ms per image fits (refused at start, naming the
    cheapest, if none does)."""
    runtime: Literal[RUNTIME.allowed] = AUTO
    """Where the base models run: auto (each as the fit chose: its LiteRT file unless TensorFlow was faster), litert
    (refused, naming the model, if one has no exported file), tf."""
    runtime_threads: int = Field(0, ge=0)
    """LiteRT threads per call (0: one per core this process may use)."""
    intra_op_threads: int = Field(0, ge=0)
    """TensorFlow threads inside one op (0: TensorFlow's choice); only for models TensorFlow serves (it is not even
    imported when none is)."""
    inter_op_threads: int = Field(0, ge=0)
    """TensorFlow ops run side by side (0: TensorFlow's choice)."""
    graceful_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM, how long requests in flight may take to finish."""
    warm_up_views: bool = True
    """Before turning ready, compile every TTA view count up to max_tta."""
    trust_custom_code: bool = False
    """Import the modules a bundle's own architectures come from (runs their code); without it such a bundle is refused
    (/readyz 503 naming the module)."""
    verify_key: Path | None = None
    """Public key (PEM): refuse a bundle not signed with its private key, or changed since."""

    @property
    def trust(self) -> Trust:
        return Trust(custom_code=self.trust_custom_code, verify_key=self.verify_key)
