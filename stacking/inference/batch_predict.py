"""``stacking predict``: a Kaggle ``Id,Category`` submission from a folder of images, streamed and resumable.

Images go through in chunks of ``batch_size``: while one chunk is predicted the next is
decoded (``workers`` threads, through the pixel cache), so memory holds two chunks of
pixels whatever the folder's size. Each finished chunk's probabilities are saved in a checkpoint folder beside the
output (``.NAME.partial``); ``--resume`` continues an interrupted run from there, and
the outputs are written atomically only when every chunk is done. Predictions come
from :class:`Predictor`, the service's own path.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from stacking.bundle import Trust
from stacking.choices import EXECUTOR, ON_BAD_IMAGE, Executor, OnBadImage
from stacking.cluster import check_ray, check_request, job_threads, ray_cluster, size_worker
from stacking.data.cache import PixelCache
from stacking.data.datasets import ImageSet, list_images, load_chunk
from stacking.errors import UserError
from stacking.files import atomic_path, write_atomically
from stacking.inference.predictor import Predictor

Echo = Callable[[str], None]


@dataclass(frozen=True)
class PredictOptions:
    views: int | None = None
    policy: str | None = None
    on_bad_image: str = "error"  # "error": stop at the first unreadable image; "skip": leave it out, report it
    fallback_class: str | None = None  # with skip: give unreadable images this class instead of leaving them out
    batch_size: int = 256  # images decoded and predicted at a time: a chunk
    workers: int = 4  # decoding threads
    resume: bool = False
    executor: str = "local"  # "ray": chunks go through Ray Data to actors that each load the bundle once
    ray_address: str = ""  # the Ray cluster to join; empty: start a local one
    actors: int = 2  # Ray actors, each with its own copy of the bundle
    cpus_per_actor: float = 1.0  # each actor's Ray request; its TensorFlow threads follow it
    cache_dir: str = ""  # the pixel cache (empty: the default); with Ray, as each actor's node sees it


# Where the chunks run, not what they compute: a run may be resumed on another executor.
WHERE_OPTIONS = ("resume", "executor", "ray_address", "actors", "cpus_per_actor", "cache_dir")


@dataclass
class PredictSummary:
    table: pd.DataFrame  # the submission rows as written
    skipped: list[tuple[str, str]]  # (file, reason) of every unreadable image
    images: int  # images in the folder
    seconds: float  # wall time of this run (a resumed run: its own part only)
    resumed_images: int  # images already done by the interrupted run


def find_sample_submission(images_dir: Path) -> Path | None:
    """``sample_submission.csv`` in the image folder or beside it, as Kaggle lays it out."""
    for candidate in (Path(images_dir) / "sample_submission.csv", Path(images_dir).parent / "sample_submission.csv"):
        if candidate.is_file():
            return candidate
    return None


def order_by_sample(ids: list[str], sample: Path, skipped: set[str] = frozenset()) -> list[str]:
    """The sample submission's Id order (less ``skipped`` images); an error names ids missing on either side."""
    table = pd.read_csv(sample, dtype=str, keep_default_na=False)
    if "Id" not in table.columns:
        raise UserError(f"{sample}: no Id column")
    wanted, have = [i for i in table["Id"] if i not in skipped], set(ids)
    missing = [i for i in wanted if i not in have]
    extra = sorted(have - set(wanted))
    if missing or extra:
        raise UserError(
            f"{sample}: {len(missing)} Id(s) without an image (e.g. {missing[:3]}), "
            f"{len(extra)} image(s) not in it (e.g. {extra[:3]})"
        )
    return wanted


def checkpoint_dir(out: Path) -> Path:
    return Path(out).with_name(f".{Path(out).name}.partial")


def _check_options(predictor: Predictor, options: PredictOptions) -> None:
    ON_BAD_IMAGE.check(options.on_bad_image)
    if options.fallback_class is not None:
        if options.on_bad_image != OnBadImage.SKIP:
            raise UserError("--fallback-class: only with --on-bad-image skip")
        if options.fallback_class not in predictor.classes:
            raise UserError(f"--fallback-class {options.fallback_class!r}: not one of the classes {predictor.classes}")
    if options.batch_size < 1 or options.workers < 1:
        raise UserError("--batch-size and --workers: must be at least 1")
    EXECUTOR.check(options.executor)
    if options.actors < 1 or options.cpus_per_actor <= 0:
        raise UserError("--actors must be at least 1 and --cpus-per-actor above 0")


def _open_checkpoint(folder: Path, state: dict, resume: bool, echo: Echo) -> None:
    """A checkpoint folder for this run: the interrupted one's when resuming (if it is this same run)."""
    saved = folder / "state.json"
    if folder.exists() and resume and saved.is_file():
        before = json.loads(saved.read_text())
        changed = [k for k in state if before.get(k) != state[k]]
        if changed:
            raise UserError(
                f"--resume: the interrupted run in {folder} differs in {', '.join(changed)}; "
                "run without --resume to start over"
            )
        return
    if folder.exists():
        echo(
            f"discarding the checkpoint of an earlier run in {folder}"
            if not resume
            else f"{folder} holds no usable checkpoint; starting over"
        )
        shutil.rmtree(folder)
    elif resume:
        echo("nothing to resume; starting from the first image")
    folder.mkdir(parents=True)
    write_atomically(saved, json.dumps(state, indent=2))


def _chunk_file(folder: Path, k: int) -> Path:
    return folder / f"chunk_{k:06d}.npz"


def decode_chunk(predictor: Predictor, paths: list[Path], options: PredictOptions):
    """A chunk's (images kept, pixels in memory, [(path, reason)] of those that could not be read), through the
    pixel cache: a second run, or another bundle at the same sizes, decodes nothing."""
    cache = PixelCache(Path(options.cache_dir) if options.cache_dir else None)
    return load_chunk(ImageSet(paths, predictor.classes), predictor.sizes, options.on_bad_image, cache, options.workers)


def predict_chunk(predictor: Predictor, decoded, options: PredictOptions) -> bytes:
    """A decoded chunk's checkpoint file: ids, probabilities and unreadable files, as ``.npz`` bytes.

    Every executor predicts whole chunks through this one function, so a chunk's
    images share the same compiled calls, and the numbers are the same to the bit.
    """
    kept, pixels, bad = decoded
    probs = (
        predictor.predict(pixels, options.views, options.policy).probabilities
        if kept.paths
        else np.zeros((0, len(predictor.classes)), np.float32)
    )
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.array(kept.ids, dtype=str),
        probabilities=probs.astype(np.float32),
        bad_files=np.array([str(p) for p, _ in bad], dtype=str),
        bad_reasons=np.array([r for _, r in bad], dtype=str),
    )
    return buffer.getvalue()


def save_chunk(folder: Path, k: int, content: bytes) -> None:
    with atomic_path(_chunk_file(folder, k)) as tmp:
        tmp.write_bytes(content)


def _run_chunks(
    predictor: Predictor, chunks: list[list[Path]], todo: list[int], folder: Path, options: PredictOptions, bar: tqdm
) -> None:
    """Predict chunks ``todo`` here, decoding the next one while the current one is predicted."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead") as ahead:
        upcoming = ahead.submit(decode_chunk, predictor, chunks[todo[0]], options)
        for position, k in enumerate(todo):
            decoded = upcoming.result()
            if position + 1 < len(todo):
                upcoming = ahead.submit(decode_chunk, predictor, chunks[todo[position + 1]], options)
            save_chunk(folder, k, predict_chunk(predictor, decoded, options))
            bar.update(len(chunks[k]))


class ChunkPredictor:
    """A Ray Data actor: loads the bundle once, then decodes and predicts whole chunks, a row each."""

    def __init__(
        self,
        bundle: str,
        sha256: str,
        call_rows: int,
        options: PredictOptions,
        trust: Trust,
        runtime: str,
        serve_as: str,
    ):
        size_worker(options.cpus_per_actor, 0)
        self.predictor = Predictor(
            Path(bundle), call_rows, trust, runtime, job_threads(options.cpus_per_actor), serve_as
        )
        self.options = options
        self.error = (
            ""
            if self.predictor.sha256 == sha256
            else (f"{bundle} on {socket.gethostname()} is another bundle than the one this run started with")
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        files, errors = [], []
        for paths in batch["paths"]:
            try:
                if self.error:
                    raise UserError(self.error)
                missing = [p for p in paths if not Path(p).is_file()]
                if missing:  # not an unreadable image to skip: this node does not see the folder
                    raise UserError(
                        f"{missing[0]}: not found on {socket.gethostname()}; every Ray node must see "
                        "the images at the same path"
                    )
                decoded = decode_chunk(self.predictor, [Path(p) for p in paths], self.options)
                files.append(predict_chunk(self.predictor, decoded, self.options))
                errors.append("")
            except UserError as exc:  # bad input (an unreadable image): the driver reports it as a local run would
                files.append(b"")
                errors.append(str(exc))
        return {"chunk": batch["chunk"], "file": np.array(files, dtype=object), "error": np.array(errors)}


def run_chunks_on_ray(
    predictor: Predictor, chunks: list[list[Path]], todo: list[int], folder: Path, options: PredictOptions, bar: tqdm
) -> None:
    """Predict chunks ``todo`` through Ray Data: a row per chunk, ``map_batches`` over ``options.actors`` actors.

    A row is a whole chunk, not an image, so each chunk meets the models in the same
    calls as a local run and gets the same numbers. Every node must read the bundle
    and the images at the same paths (a shared filesystem).
    """
    with ray_cluster(options.ray_address) as ray:
        total = options.actors * options.cpus_per_actor
        check_request(ray, options.ray_address, {"--actors x --cpus-per-actor": ("CPU", total)})
        ray.data.DataContext.get_current().enable_progress_bars = False  # the run's own bar counts images
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset execution
        rows = ray.data.from_items(
            [{"chunk": k, "paths": [str(p.resolve()) for p in chunks[k]]} for k in todo], override_num_blocks=len(todo)
        )
        results = rows.map_batches(
            ChunkPredictor,
            fn_constructor_args=(
                str(predictor.bundle.resolve()),
                predictor.sha256,
                predictor.forward.rows_per_call,
                options,
                predictor.trust,
                predictor.runtime,
                predictor.serve_as,
            ),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            num_cpus=options.cpus_per_actor,
        )
        for row in results.iter_rows():
            if row["error"]:
                raise UserError(row["error"])
            k = int(row["chunk"])
            save_chunk(folder, k, row["file"])
            bar.update(len(chunks[k]))


def _collect(folder: Path, chunks: int) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    ids, probs, bad = [], [], []
    for k in range(chunks):
        with np.load(_chunk_file(folder, k)) as part:
            ids += part["ids"].tolist()
            probs.append(part["probabilities"])
            bad += list(zip(part["bad_files"].tolist(), part["bad_reasons"].tolist()))
    return ids, np.concatenate(probs), bad


def _write_probabilities(path: Path, probs: pd.DataFrame) -> None:
    """Every class probability per image: parquet when the name ends in .parquet, else CSV."""
    if path.suffix == ".parquet":
        with atomic_path(path) as tmp:
            probs.reset_index().to_parquet(tmp, index=False)
    else:
        write_atomically(path, probs.reset_index().to_csv(index=False))


def predict_folder(
    predictor: Predictor,
    images_dir: Path,
    out: Path,
    options: PredictOptions = PredictOptions(),
    sample_submission: Path | None = None,
    probabilities_out: Path | None = None,
    echo: Echo = print,
) -> PredictSummary:
    """Predict every image in ``images_dir``; write ``Id,Category`` to ``out`` (and ``probabilities_out``)."""
    started = time.monotonic()
    _check_options(predictor, options)
    predictor.check_views(options.views, options.policy)
    if options.executor == Executor.RAY:
        check_ray(options.ray_address)
    paths = list_images(images_dir)
    if not paths:
        raise UserError(f"{images_dir}: no images")
    folder = checkpoint_dir(out)
    state = {
        "bundle": predictor.sha256,
        "images": str(Path(images_dir).resolve()),
        "files": [p.name for p in paths],
        "call_rows": predictor.forward.rows_per_call,  # the call shape sets the bits
        "runtimes": predictor.runtimes,  # and so does the runtime
        "serve_as": predictor.serve_as,  # and which option answers
        **{k: v for k, v in asdict(options).items() if k not in WHERE_OPTIONS},
    }
    _open_checkpoint(folder, state, options.resume, echo)
    chunks = [paths[i : i + options.batch_size] for i in range(0, len(paths), options.batch_size)]
    todo = [k for k in range(len(chunks)) if not _chunk_file(folder, k).is_file()]
    done = len(paths) - sum(len(chunks[k]) for k in todo)
    if done:
        echo(f"resuming: {done} of {len(paths)} images already predicted")
    if todo:
        run = _run_chunks if options.executor == Executor.LOCAL else run_chunks_on_ray
        with tqdm(total=len(paths), initial=done, desc="predict", unit="img", disable=None) as bar:
            run(predictor, chunks, todo, folder, options, bar)
    ids, probs, bad = _collect(folder, len(chunks))
    table = pd.DataFrame(probs, index=pd.Index(ids, name="Id"), columns=predictor.classes)
    skipped_ids = {Path(p).name for p, _ in bad}
    if options.fallback_class is not None and bad:  # unreadable images get the stated class, and no probabilities
        fallback = pd.DataFrame(np.nan, index=pd.Index(sorted(skipped_ids), name="Id"), columns=predictor.classes)
        table, skipped_ids = pd.concat([table, fallback]), set()
    if table.empty:
        raise UserError(f"{images_dir}: none of the {len(paths)} images could be read")
    sample = sample_submission or find_sample_submission(images_dir)
    if sample is not None:
        table = table.loc[order_by_sample(table.index.tolist(), sample, skipped_ids)]
    labels = [
        options.fallback_class if np.isnan(row).any() else predictor.classes[int(np.argmax(row))]
        for row in table.to_numpy()
    ]
    submission = pd.DataFrame({"Id": table.index, "Category": labels})
    write_atomically(out, submission.to_csv(index=False))
    if probabilities_out is not None:
        _write_probabilities(Path(probabilities_out), table)
    shutil.rmtree(folder)
    return PredictSummary(submission, bad, len(paths), time.monotonic() - started, done)
