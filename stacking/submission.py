"""``stacking predict``: a Kaggle ``Id,Category`` submission from a folder of images, streamed and resumable.

Images go through in chunks of ``batch_size``: while one chunk is predicted the next is
decoded (``workers`` threads), so memory holds two chunks of pixels whatever the folder's
size. Each finished chunk's probabilities are saved in a checkpoint folder beside the
output (``.NAME.partial``); ``--resume`` continues an interrupted run from there, and
the outputs are written atomically only when every chunk is done. Predictions come
from :class:`Predictor`, the service's own path.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from stacking.datasets import ON_BAD_IMAGE, ImageSet, list_images, load_pixels
from stacking.errors import UserError
from stacking.files import atomic_path, write_atomically
from stacking.predictor import Predictor

Echo = Callable[[str], None]


@dataclass(frozen=True)
class PredictOptions:
    views: int | None = None
    policy: str | None = None
    on_bad_image: str = "error"  # "error": stop at the first unreadable image; "skip": leave it out, report it
    fallback_class: str | None = None  # with skip: give unreadable images this class instead of leaving them out
    batch_size: int = 256  # images decoded and predicted at a time
    workers: int = 4  # decoding threads
    resume: bool = False


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
    if options.on_bad_image not in ON_BAD_IMAGE:
        raise UserError(f"--on-bad-image {options.on_bad_image!r}: expected one of {', '.join(ON_BAD_IMAGE)}")
    if options.fallback_class is not None:
        if options.on_bad_image != "skip":
            raise UserError("--fallback-class: only with --on-bad-image skip")
        if options.fallback_class not in predictor.classes:
            raise UserError(f"--fallback-class {options.fallback_class!r}: not one of the classes {predictor.classes}")
    if options.batch_size < 1 or options.workers < 1:
        raise UserError("--batch-size and --workers: must be at least 1")


def _open_checkpoint(folder: Path, state: dict, resume: bool, echo: Echo) -> None:
    """A checkpoint folder for this run: the interrupted one's when resuming (if it is this same run)."""
    saved = folder / "state.json"
    if folder.exists() and resume and saved.is_file():
        before = json.loads(saved.read_text())
        changed = [k for k in state if before.get(k) != state[k]]
        if changed:
            raise UserError(f"--resume: the interrupted run in {folder} differs in {', '.join(changed)}; "
                            "run without --resume to start over")
        return
    if folder.exists():
        echo(f"discarding the checkpoint of an earlier run in {folder}" if not resume else
             f"{folder} holds no usable checkpoint; starting over")
        shutil.rmtree(folder)
    elif resume:
        echo("nothing to resume; starting from the first image")
    folder.mkdir(parents=True)
    write_atomically(saved, json.dumps(state, indent=2))


def _chunk_file(folder: Path, k: int) -> Path:
    return folder / f"chunk_{k:06d}.npz"


def _save_chunk(path: Path, ids: list[str], probs: np.ndarray, bad: list[tuple[Path, str]]) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, ids=np.array(ids, dtype=str), probabilities=probs.astype(np.float32),
                 bad_files=np.array([str(p) for p, _ in bad], dtype=str),
                 bad_reasons=np.array([r for _, r in bad], dtype=str))


def _run_chunks(predictor: Predictor, chunks: list[list[Path]], folder: Path, options: PredictOptions,
                done: int) -> None:
    """Predict every chunk without a checkpoint file, decoding the next one while the current one is predicted."""
    todo = [k for k, _ in enumerate(chunks) if not _chunk_file(folder, k).is_file()]
    if not todo:
        return

    def decode(k: int):
        return load_pixels(ImageSet(chunks[k], predictor.classes), predictor.image_size, options.on_bad_image,
                           options.workers)

    total = sum(len(c) for c in chunks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead") as ahead, \
            tqdm(total=total, initial=done, desc="predict", unit="img", disable=None) as bar:
        upcoming = ahead.submit(decode, todo[0])
        for position, k in enumerate(todo):
            kept, pixels, bad = upcoming.result()
            if position + 1 < len(todo):
                upcoming = ahead.submit(decode, todo[position + 1])
            probs = (predictor.predict(pixels, options.views, options.policy).probabilities if kept.paths
                     else np.zeros((0, len(predictor.classes)), np.float32))
            _save_chunk(_chunk_file(folder, k), kept.ids, probs, bad)
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
    paths = list_images(images_dir)
    if not paths:
        raise UserError(f"{images_dir}: no images")
    folder = checkpoint_dir(out)
    state = {"bundle": predictor.sha256, "images": str(Path(images_dir).resolve()),
             "files": [p.name for p in paths], "call_rows": predictor.forward.rows_per_call,  # the call shape sets the bits
             **{k: v for k, v in asdict(options).items() if k != "resume"}}
    _open_checkpoint(folder, state, options.resume, echo)
    chunks = [paths[i : i + options.batch_size] for i in range(0, len(paths), options.batch_size)]
    done = sum(len(c) for k, c in enumerate(chunks) if _chunk_file(folder, k).is_file())
    if done:
        echo(f"resuming: {done} of {len(paths)} images already predicted")
    _run_chunks(predictor, chunks, folder, options, done)
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
    labels = [options.fallback_class if np.isnan(row).any() else predictor.classes[int(np.argmax(row))]
              for row in table.to_numpy()]
    submission = pd.DataFrame({"Id": table.index, "Category": labels})
    write_atomically(out, submission.to_csv(index=False))
    if probabilities_out is not None:
        _write_probabilities(Path(probabilities_out), table)
    shutil.rmtree(folder)
    return PredictSummary(submission, bad, len(paths), time.monotonic() - started, done)
