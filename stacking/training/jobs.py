"""A fit's jobs: one per (base model, fold), each training one CNN and predicting its out-of-fold rows.

Jobs share nothing but read-only inputs (pixels, labels, ``JobSettings``) and seed
themselves, so an executor may run them in any order, in this process or on a Ray
cluster, and a job gives the same result wherever it runs, given the same TensorFlow
thread count (training's reductions split work by threads: 1 and 2 threads give
different last bits). A finished job's result goes into the fit's work folder with a
record of what it is (``JobStore``); ``stacking fit --resume`` reruns only the jobs
without a valid record.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import socket
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from pydantic import TypeAdapter
from tqdm import tqdm

from models.registry import create_model, get_spec, is_custom
from models.training import train_model
from stacking import bundle as bundle_io
from stacking.data.cache import CachedRows
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.files import atomic_path
from stacking.inference.tta import TTAForward, View, ViewSet
from stacking.runtime import KerasRunner
from stacking.training.config import ModelConfig
from stacking.training.protocols import Split


@dataclass(frozen=True)
class JobSettings:
    """The fit-wide settings a job reads. A job's key hashes them, so changing one reruns the job on ``--resume``."""

    deterministic: bool
    mixed_precision: bool


@dataclass(frozen=True)
class Job:
    """Train ``member`` on ``split.fit`` watching ``split.val``, then predict ``split.oof`` (none for a refit)."""

    member: ModelConfig  # the base model: architecture, size, weights, head and recipe
    seed: int
    split: Split
    views: tuple[View, ...]  # the OOF views predicted, at the member's size: the served ones and the diagnostics'
    fold: int | None = None  # kfold's fold; None for holdout and for the refit
    refit: bool = False
    weights_sha256: str | None = None  # of the member's weights file, hashed once per member by the plan

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def model(self) -> str:
        return self.member.architecture

    @property
    def id(self) -> str:
        return self.name + (".refit" if self.refit else "" if self.fold is None else f".fold{self.fold}")

    @property
    def desc(self) -> str:
        return (
            f"{self.name} refit" if self.refit else self.name if self.fold is None else f"{self.name} fold {self.fold}"
        )

    def key(self, settings: JobSettings, data: str) -> str:
        """What the job computes from: its identity, base model, seed, rows, views, settings, the data's fingerprint
        and the code.

        ``data``: the fingerprint of the training data at the member's size. The code: the
        library versions, and for your own architecture its module's source. A weights file
        counts by its content. Not the thread count: a job run with other threads is as good,
        not the same to the bit (its record keeps the count).
        """
        rows = {
            part: hashlib.sha256(np.asarray(getattr(self.split, part), np.int64).tobytes()).hexdigest()
            for part in ("fit", "val", "oof")
        }
        content = {
            "job": self.id,
            "member": TypeAdapter(ModelConfig).dump_python(self.member, mode="json"),
            "weights_sha256": self.weights_sha256,
            "seed": self.seed,
            "rows": rows,
            "views": [asdict(v) for v in self.views],
            "settings": asdict(settings),
            "data": data,
            "versions": bundle_io.library_versions(),
            "source": _builder_source(self.model),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _builder_source(model: str) -> str | None:
    """The sha256 of a custom architecture's module file (edit the builder, the job runs again)."""
    if not is_custom(model):
        return None
    module = importlib.import_module(model.partition(":")[0])
    return hashlib.sha256(Path(inspect.getfile(module)).read_bytes()).hexdigest()


@dataclass
class JobResult:
    model: bytes  # the best epoch's .keras file
    history: dict
    per_view: np.ndarray | None  # (views, OOF rows, classes) float32; None for a refit
    seconds: float
    worker: str  # host:pid that ran it
    threads: int  # TensorFlow's intra-op threads there (the numerics depend on it)


def data_fingerprint(ids: list[str], labels: np.ndarray, pixels: CachedRows) -> str:
    """The identity of the training data as the jobs see it: ids, labels and decoded pixels (each file's content
    digest, the size and the decoder: the pixels are not read)."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update("\n".join(ids).encode())
    digest.update(np.ascontiguousarray(labels, np.int64).tobytes())
    digest.update(pixels.identity().encode())
    return digest.hexdigest()


def set_numerics(deterministic: bool, mixed_precision: bool) -> None:
    """Process-wide switches: deterministic ops (CPU default) and mixed precision (GPU users)."""
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")


def _build_model(job: Job, n_classes: int, offline: bool) -> keras.Model:
    """A freshly initialised base model; seeding first fixes its initial weights."""
    from models.weights import no_downloads

    keras.utils.set_random_seed(job.seed)  # initial weights, dropout and augmentation
    member = job.member
    try:
        with no_downloads() if offline else nullcontext():
            return create_model(
                member.architecture,
                n_classes,
                member.image_size,
                weights=member.start,
                head=member.head,
                dropout=member.dropout,
            )
    except ValueError as exc:  # a custom builder that cannot be imported or returns the wrong shape
        raise UserError(f"model {job.name!r}: {exc}") from None
    except Exception as exc:  # keras raises plain Exceptions when a download fails (checked before the fit, here
        if member.start is None:  # again on a Ray node with another cache)
            raise
        raise UserError(f"model {job.name!r}: could not load its weights {member.weights!r} ({exc})") from None


def run_job(
    job: Job, pixels: CachedRows, labels: np.ndarray, n_classes: int, settings: JobSettings, offline: bool = False
) -> JobResult:
    """The whole job, wherever it runs: train one base model, keep its best epoch, predict its OOF rows.

    ``pixels``: every training image at the member's size, read from the pixel cache in batches; ``offline``: no
    download (a Ray node's cache may lack what the fit checked on its own)."""
    started = time.monotonic()
    set_numerics(settings.deterministic, settings.mixed_precision)
    model = _build_model(job, n_classes, offline)
    member = job.member
    with tempfile.TemporaryDirectory(prefix="stackserve-job-") as tmp:
        path = Path(tmp) / "model.keras"
        # A live bar on a terminal only (disable=None); the fit prints a summary line in any case.
        with tqdm(total=member.train.epochs, desc=job.desc, unit="epoch", leave=False, disable=None) as bar:
            trained, history = train_model(
                model,
                (pixels[job.split.fit], labels[job.split.fit]),
                (pixels[job.split.val], labels[job.split.val]),
                member.train,
                path,
                seed=job.seed,
                fine_tune=get_spec(job.model).block_pattern if member.start else None,
                on_epoch_end=lambda _, logs: (bar.update(), bar.set_postfix(val_acc=f"{logs['val_accuracy']:.3f}")),
            )
        size = member.image_size
        per_view = (
            None
            if job.refit
            else TTAForward([KerasRunner([trained])], [size])(
                Pixels({size: pixels[job.split.oof]}), ViewSet.of(size, job.views)
            )[0]
        )
        return JobResult(
            path.read_bytes(),
            history,
            per_view,
            time.monotonic() - started,
            f"{socket.gethostname()}:{os.getpid()}",
            tf.config.threading.get_intra_op_parallelism_threads() or len(os.sched_getaffinity(0)),
        )  # TensorFlow's default: the cores it may use


class JobStore:
    """Finished jobs in a fit's work folder (``.OUT.partial/jobs/``): model file, OOF rows and a record each.

    The record (``<id>.json``) is written last, so a job counts as finished only once
    all of its files are complete; it holds the job's key and its model's sha256, so a
    changed setting or a damaged file makes the job run again.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _file(self, job_id: str, suffix: str) -> Path:
        return self.folder / f"{job_id}{suffix}"

    def records(self) -> dict[str, dict]:
        """Every finished job's record, by job id (not the atomic writer's temporary files: they start with a dot)."""
        found = {}
        for path in sorted(self.folder.glob("[!.]*.json")) if self.folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
                if record["job"] == path.stem and {"key", "sha256", "oof_sha256", "history"} <= record.keys():
                    found[path.stem] = record
            except (ValueError, OSError, KeyError, TypeError):
                continue  # damaged: the job runs again
        return found

    def finished(self, job: Job, key: str, records: dict[str, dict]) -> bool:
        """Stored with this key (``records``: from ``records()``), and its files are the ones stored (sha256)."""
        record = records.get(job.id)
        if record is None or record["key"] != key:
            return False
        files = {".keras": record["sha256"], **({} if job.refit else {".oof.npy": record["oof_sha256"]})}
        return all(
            self._file(job.id, suffix).is_file() and bundle_io.sha256_file(self._file(job.id, suffix)) == sha
            for suffix, sha in files.items()
        )

    def save(self, job: Job, key: str, result: JobResult) -> None:
        with atomic_path(self._file(job.id, ".keras")) as tmp:
            tmp.write_bytes(result.model)
        oof_sha256 = None
        if result.per_view is not None:
            with atomic_path(self._file(job.id, ".oof.npy")) as tmp:
                np.save(tmp, result.per_view)
            oof_sha256 = bundle_io.sha256_file(self._file(job.id, ".oof.npy"))
        bundle_io.write_json(
            self._file(job.id, ".json"),
            {
                "job": job.id,
                "key": key,
                "model": job.model,
                "image_size": job.member.image_size,
                "fold": job.fold,
                "refit": job.refit,
                "seed": job.seed,
                "sha256": hashlib.sha256(result.model).hexdigest(),
                "oof_sha256": oof_sha256,
                "history": result.history,
                "seconds": round(result.seconds, 1),
                "worker": result.worker,
                "threads": result.threads,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )

    def load(self, job: Job) -> tuple[dict, np.ndarray | None]:
        """A finished job's (history, per-view OOF probabilities)."""
        history = json.loads(self._file(job.id, ".json").read_text())["history"]
        return history, None if job.refit else np.load(self._file(job.id, ".oof.npy"))

    def model_file(self, job: Job) -> Path:
        """The finished job's best-epoch ``.keras`` file."""
        return self._file(job.id, ".keras")

    def runs(self, jobs: list[Job]) -> dict[str, dict]:
        """Where each finished job ran, for how long, on how many threads (for the manifest's metrics)."""
        records = self.records()
        return {job.id: {k: records[job.id][k] for k in ("seconds", "worker", "threads")} for job in jobs}
