"""The serving path shared by ``/v1/predict`` and the Open Inference Protocol (REST and gRPC).

Admission first (a full queue costs nothing), then decoding off the event loop, then
the batcher, then timings for the ``Server-Timing`` header.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from app.batching import Batcher, wait_for_jobs
from app.errors import ServiceError
from app.settings import Settings
from app.state import ModelState
from stacking.data.images import ImageDecodeError, Pixels, decode_image
from stacking.inference.predictor import Prediction, Predictor

ACCEPTED_TYPES = ("image/", "application/octet-stream")


@dataclass
class Serving:
    """What every transport (HTTP, gRPC) serves through: one model state, one batcher, one pool of decoders."""

    settings: Settings
    state: ModelState
    batcher: Batcher
    decoders: Executor

    def predictor(self) -> Predictor:
        """The loaded predictor (also while draining: requests that still arrive are answered)."""
        if self.state.predictor is None:
            raise ServiceError(
                503,
                "the model is not loaded yet"
                if self.state.error is None
                else f"the model failed to load: {self.state.error}",
            )
        return self.state.predictor

    def key_matches(self, given: str) -> bool:
        """With ``api_key`` set, the model routes (HTTP and gRPC) need it, compared in constant time."""
        expected = self.settings.api_key
        return not expected or secrets.compare_digest(given.encode(), expected.encode())


@dataclass
class Upload:
    name: str
    data: bytes
    content_type: str | None = None


@dataclass
class Served:
    """Per upload: its row in ``prediction``, or the error that says why it could not be used."""

    prediction: Prediction | None
    rows: list[int | ServiceError]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def server_timing(self) -> str:
        return ", ".join(f"{name};dur={ms:.1f}" for name, ms in self.timings_ms.items())


def _decode(upload: Upload, sizes: list[int], max_pixels: int) -> Pixels | ServiceError:
    """The upload's pixels, decoded once, at each size; or the error that names why it cannot be used."""
    if upload.content_type and not upload.content_type.startswith(ACCEPTED_TYPES):
        return ServiceError(415, f"{upload.name}: unsupported content type {upload.content_type!r}; send an image")
    if not upload.data:
        return ServiceError(400, f"{upload.name}: empty file")
    try:
        return decode_image(upload.data, sizes, max_pixels)
    except ImageDecodeError as exc:
        return ServiceError(400, f"{upload.name}: {exc}")


def check_tta(predictor: Predictor, settings: Settings, tta: int | None, policy: str | None) -> None:
    limit = min(settings.max_tta, predictor.max_views(policy))
    if tta is not None and tta > limit:
        raise ServiceError(422, f"tta: {tta} views asked for; this service allows at most {limit}")


async def serve_uploads(
    serving: Serving,
    predictor: Predictor,
    uploads: list[Upload],
    tta: int | None,
    policy: str | None,
    gone: Awaitable[None] | None = None,
    timeout_s: float | None = None,
) -> Served:
    """Decode, batch and predict; raises when no upload is usable (with the first one's error).

    ``gone`` completes if the client leaves first (its queued work is then dropped); ``timeout_s``, the client's
    own deadline, shortens the service's ``request_timeout_s``.
    """
    arrived = time.monotonic()
    settings, batcher = serving.settings, serving.batcher
    if len(uploads) > settings.max_files:
        raise ServiceError(413, f"files: {len(uploads)} images in one request; the limit is {settings.max_files}")
    check_tta(predictor, settings, tta, policy)
    batcher.admit()
    batcher.incoming += 1
    try:
        decoded = await asyncio.get_running_loop().run_in_executor(
            serving.decoders, lambda: [_decode(u, predictor.sizes, settings.max_pixels) for u in uploads]
        )
    finally:
        batcher.incoming -= 1
    good = [i for i, d in enumerate(decoded) if isinstance(d, Pixels)]
    if not good:
        raise decoded[0]
    decoded_at = time.monotonic()
    timeout = min(settings.request_timeout_s, timeout_s if timeout_s is not None else float("inf"))
    futures = batcher.submit(Pixels.concat([decoded[i] for i in good]), tta, policy, arrived + timeout)
    prediction = await wait_for_jobs(futures, gone)
    done = time.monotonic()
    row = {i: k for k, i in enumerate(good)}
    compute = {k: v * 1000 for k, v in prediction.seconds.items()}
    timings = {
        "decode": (decoded_at - arrived) * 1000,
        "queue": max(0.0, (done - decoded_at) * 1000 - sum(compute.values())),
        **compute,
    }
    return Served(prediction, [row[i] if i in row else decoded[i] for i in range(len(uploads))], timings)
