"""Dynamic batching: concurrent requests' images merged into one model call, results split back.

Each request (split into jobs of at most ``max_batch`` images) waits in one bounded
queue. A single worker takes the oldest job and every queued job with the same TTA
settings, up to ``max_batch`` images, runs the base models once (every view of every
image in fixed-shape compiled calls) and the meta-learner once, and hands each job
its rows. It waits up to ``max_wait`` for more jobs only while other requests are
still being decoded; with nothing on the way it runs at once.

Admission: a full queue is refused at once (503 with Retry-After) instead of growing
latency without bound. A job whose client has gone (its future cancelled) or whose
deadline has passed is dropped before it reaches the models.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app import metrics
from app.errors import ServiceError
from app.state import ModelState
from stacking.data.images import Pixels
from stacking.inference.predictor import Prediction

Key = tuple[int | None, str | None]  # (TTA views, TTA policy): jobs merge only with equal keys


@dataclass
class Job:
    pixels: Pixels  # n images at each size the predictor takes
    key: Key
    deadline: float  # time.monotonic() after which the answer is no longer wanted
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """The queue and the worker that empties it; one per process, started by the app's lifespan."""

    def __init__(self, state: ModelState, max_batch: int, max_wait: float, queue_size: int, retry_after: int = 1):
        self.state = state  # its predictor is set once loaded; requests are refused (503) before that
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.queue_size = queue_size
        self.retry_after = retry_after
        self.incoming = 0  # requests admitted and still decoding: worth waiting for
        self._queue: deque[Job] = deque()
        self._wake = asyncio.Event()
        # One thread runs the models: TensorFlow parallelises inside each call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="models")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def admit(self) -> None:
        """Refuse a request when the queue is full, before it costs any decoding.

        Requests still decoding count too: they will be queued in a moment.
        """
        if len(self._queue) + self.incoming >= self.queue_size:
            metrics.REJECTED.labels("queue_full").inc()
            raise ServiceError(
                503,
                f"the queue is full ({self.queue_size} jobs waiting); retry shortly",
                "queue_full",
                headers={"Retry-After": str(self.retry_after)},
            )

    def submit(self, pixels: Pixels, views: int | None, policy: str | None, deadline: float) -> list[asyncio.Future]:
        """Queue ``pixels`` in jobs of at most ``max_batch`` images; one future per job, in order."""
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(pixels), self.max_batch):
            job = Job(pixels[start : start + self.max_batch], (views, policy), deadline, loop.create_future())
            self._queue.append(job)
            futures.append(job.future)
        metrics.QUEUE_DEPTH.set(len(self._queue))
        self._wake.set()
        return futures

    def _drop_unwanted(self) -> None:
        """Drop queued jobs whose client has gone or whose deadline has passed."""
        now, kept = time.monotonic(), deque()
        for job in self._queue:
            if job.future.done():  # cancelled: the client disconnected
                metrics.DROPPED.labels("client_gone").inc()
            elif now > job.deadline:
                metrics.DROPPED.labels("deadline").inc()
                job.future.set_exception(
                    ServiceError(
                        503,
                        "the request's deadline passed while it waited in the queue",
                        "deadline_exceeded",
                        headers={"Retry-After": str(self.retry_after)},
                    )
                )
            else:
                kept.append(job)
        self._queue = kept

    def _take_batch(self) -> list[Job]:
        """The oldest job and every queued job with its key, up to ``max_batch`` images."""
        first = self._queue.popleft()
        batch, size, rest = [first], len(first.pixels), deque()
        while self._queue:
            job = self._queue.popleft()
            if job.key == first.key and size + len(job.pixels) <= self.max_batch:
                batch.append(job)
                size += len(job.pixels)
            else:
                rest.append(job)
        self._queue = rest
        return batch

    async def _gather_more(self) -> None:
        """Wait up to ``max_wait`` for requests still being decoded; not at all when none is on the way."""
        deadline = time.monotonic() + self.max_wait
        while self.incoming > 0 and sum(len(j.pixels) for j in self._queue) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather_more()
            self._drop_unwanted()
            if not self._queue:
                continue
            batch = self._take_batch()
            metrics.QUEUE_DEPTH.set(len(self._queue))
            started = time.monotonic()
            for job in batch:
                metrics.QUEUE_WAIT.observe(started - job.queued_at)
            pixels = Pixels.concat([job.pixels for job in batch])
            views, policy = batch[0].key
            try:
                result = await loop.run_in_executor(self._executor, self.state.predictor.predict, pixels, views, policy)
            except Exception as exc:  # noqa: BLE001  every waiting request gets the error, the worker lives on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            metrics.record_batch(len(pixels), int(result.views.sum()), result.seconds)
            start = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(result.rows(start, start + len(job.pixels)))
                start += len(job.pixels)


async def disconnected(receive) -> None:
    """Returns when an HTTP client has gone: after the body, an ASGI receive() yields only ``http.disconnect``.

    Waiting on it costs nothing, unlike polling for a disconnect.
    """
    while (await receive())["type"] != "http.disconnect":
        pass


async def wait_for_jobs(futures: list[asyncio.Future], gone: Awaitable[None] | None = None) -> Prediction:
    """The jobs' results as one prediction; if the client leaves first (``gone`` completes, or this call is
    cancelled, as gRPC does when its client cancels), its jobs are cancelled: dropped before the models."""
    gone_task = asyncio.ensure_future(gone if gone is not None else asyncio.Event().wait())
    pending = set(futures)
    try:
        while pending:
            done, pending = await asyncio.wait(pending | {gone_task}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(gone_task)
            if gone_task in done:
                raise ServiceError(499, "the client closed the connection before the answer was ready")
    except BaseException:  # the client has gone, or this request was cancelled: drop its queued jobs
        for future in futures:
            future.cancel()
        raise
    finally:
        gone_task.cancel()
    return Prediction.concat([future.result() for future in futures])
