"""Where a fit's jobs run: one after another in this process, or as tasks on a Ray cluster.

Both executors take the same jobs and inputs and yield ``(job, JobResult or the
exception that failed it)`` as jobs end, in whatever order they end; the fit stores
each result as it comes, so an interrupted fit keeps every finished job. Ray is an
optional extra (``pip install "stackserve[ray]"``), imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass

import numpy as np

from stacking.choices import Executor
from stacking.cluster import check_request, job_threads, ray_cluster, size_worker
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.training.config import ClusterConfig
from stacking.training.jobs import Job, JobResult, JobSettings, run_job

Echo = Callable[[str], None]


@dataclass(frozen=True)
class JobInputs:
    """What every job reads; on Ray each size's pixels go into the object store once and are shared."""

    pixels: Pixels  # every training image at each base model's size
    labels: np.ndarray
    n_classes: int
    settings: JobSettings
    offline: bool = False  # downloads refused (not part of a job's key: it changes nothing a job computes)


class Progress:
    """Jobs done / running / failed: a line each time a job starts again or ends."""

    def __init__(self, total: int, done: int, echo: Echo):
        self.total, self.done, self.failures, self.echo = total, done, 0, echo
        self.running: set[str] = set()  # ids of the jobs whose code has started and not ended
        self.attempts: dict[str, int] = {}

    def _say(self, message: str) -> None:
        self.echo(
            f"[jobs: {self.done}/{self.total} done, {len(self.running)} running, {self.failures} failed] {message}"
        )

    def started(self, job: Job) -> None:
        self.attempts[job.id] = self.attempts.get(job.id, 0) + 1
        self.running.add(job.id)
        if self.attempts[job.id] > 1:
            self._say(f"{job.desc}: started again (attempt {self.attempts[job.id]}), its worker having died")

    def finished(self, job: Job, summary: str) -> None:
        self.running.discard(job.id)
        self.done += 1
        self._say(summary)

    def failed(self, job: Job, error: BaseException) -> None:
        self.running.discard(job.id)
        self.failures += 1
        self._say(f"{job.desc} FAILED: {error}")


def local_jobs(jobs: list[Job], inputs: JobInputs, progress: Progress) -> Iterator[tuple[Job, JobResult | Exception]]:
    """Each job in this process, using every core, one after another."""
    for job in jobs:
        progress.started(job)
        try:
            pixels = inputs.pixels.at(job.member.image_size)
            result = run_job(job, pixels, inputs.labels, inputs.n_classes, inputs.settings, inputs.offline)
        except Exception as exc:  # yielded: the fit decides whether the others run; Ctrl-C stops it
            yield job, exc
        else:
            yield job, result


def _ray_job(
    job: Job,
    pixels: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    settings: JobSettings,
    offline: bool,
    cluster: ClusterConfig,
    board,
) -> JobResult:
    """One job in a Ray worker: says it started (again, if its last worker died), then runs."""
    board.put(job.id)  # waited for: a worker that dies next must not take the note with it
    size_worker(cluster.cpus_per_job, cluster.gpus_per_job)
    return run_job(job, pixels, labels, n_classes, settings, offline)


def _started(ray, board) -> list[str]:
    """The ids of jobs that started since the last look; none if the progress queue is gone (a lost node)."""
    try:
        return board.get_nowait_batch(board.qsize())
    except ray.exceptions.RayError:
        return []


def _outcome(ray, ref, job: Job, retries: int) -> JobResult | Exception:
    """A finished task's result, or the exception that ended its job."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the job raised: bad input as itself, a bug with its remote traceback
        return exc.cause if isinstance(exc.cause, UserError) else exc
    except ray.exceptions.RayError as exc:  # its worker died once more than allowed, or similar
        return RuntimeError(f"{job.desc}: {type(exc).__name__} after {retries} retries: {exc}")


def ray_jobs(
    jobs: list[Job], inputs: JobInputs, progress: Progress, cluster: ClusterConfig
) -> Iterator[tuple[Job, JobResult | Exception]]:
    """Each job a Ray task with its resource request, run again up to ``max_retries`` times if its worker dies.

    A job that raises is not retried (the same seed would raise again); its error is
    yielded and the other jobs go on.
    """
    with ray_cluster(cluster.address) as ray:
        from ray.util.queue import Queue

        check_request(
            ray,
            cluster.address,
            {
                "[cluster] cpus_per_job": ("CPU", cluster.cpus_per_job),
                "[cluster] gpus_per_job": ("GPU", cluster.gpus_per_job),
            },
        )
        board = Queue(actor_options={"num_cpus": 0})  # the tasks' "started" notes: running, not just queued
        pixels = {size: ray.put(inputs.pixels.at(size)) for size in inputs.pixels.sizes}  # once, shared
        labels = ray.put(inputs.labels)
        threads = str(job_threads(cluster.cpus_per_job))
        task = ray.remote(_ray_job).options(
            num_cpus=cluster.cpus_per_job,
            num_gpus=cluster.gpus_per_job,
            max_retries=cluster.max_retries,
            retry_exceptions=False,
            name="stackserve-job",
            # Workers of another thread count are never reused for these jobs: TensorFlow fixes its count at start.
            runtime_env={"env_vars": {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads}},
        )
        by_id = {job.id: job for job in jobs}
        pending = {
            task.remote(
                job,
                pixels[job.member.image_size],
                labels,
                inputs.n_classes,
                inputs.settings,
                inputs.offline,
                cluster,
                board,
            ): job
            for job in jobs
        }
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)  # all that end within 1 s
                for job_id in _started(ray, board):
                    progress.started(by_id[job_id])
                for ref in ready:
                    job = pending.pop(ref)
                    yield job, _outcome(ray, ref, job, cluster.max_retries)
        finally:
            for ref in pending:  # Ctrl-C, or a fit that fails at once: the other jobs stop too
                with suppress(Exception):
                    ray.cancel(ref, force=True)
            with suppress(Exception):
                board.shutdown(force=True)


def run_jobs(
    jobs: list[Job], inputs: JobInputs, progress: Progress, cluster: ClusterConfig
) -> Iterator[tuple[Job, JobResult | Exception]]:
    if cluster.executor == Executor.RAY:
        return ray_jobs(jobs, inputs, progress, cluster)
    return local_jobs(jobs, inputs, progress)
