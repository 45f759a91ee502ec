"""``stacking fit``: train base models, make OOF predictions, select the meta-learner, write the bundle.

A fit is a set of independent jobs, one per (base model, fold) (``stacking.jobs``),
run by an executor (here, or on a Ray cluster: ``stacking.executors``), then the meta
step. Everything is built in a work folder beside ``out`` (``.OUT.partial``): each
finished job is stored there as it ends, and the assembled bundle is moved into place
only at the end. A fit that fails or is interrupted after some jobs keeps them, and
``resume=True`` (``stacking fit --resume``) runs only the rest; every job has its own
seed, so the bundle is the one an uninterrupted fit would have written.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from models import get_spec
from stacking import bundle as bundle_io
from stacking.config import FitConfig
from stacking.datasets import ImageSet, load_pixels, read_groups, read_training_set
from stacking.errors import UserError
from stacking.executors import JobInputs, Progress, check_ray, run_jobs
from stacking.files import default_mode
from stacking.jobs import Job, JobResult, JobSettings, JobStore, data_fingerprint, set_numerics
from stacking.meta import score
from stacking.protocols import (
    Split,
    check_class_counts,
    fold_assignment,
    fold_hash,
    make_splits,
    minimum_per_class,
    refit_split,
)
from stacking.report import write_report
from stacking.stack import MetaSettings, describe, fit_meta
from stacking.tta import TTAPolicy, served_result
from stacking.tta_diagnostics import diagnostic_rows, tune_and_measure

Echo = Callable[[str], None]


def work_folder(out: Path) -> Path:
    """Where a fit to ``out`` works: finished jobs in ``jobs/``, the bundle being assembled in ``bundle/``."""
    out = Path(out).resolve()
    return out.with_name(f".{out.name}.partial")


@contextmanager
def _locked_work_folder(out: Path, resume: bool, echo: Echo) -> Iterator[Path]:
    """The work folder, locked against a second fit to the same ``out``; kept on failure if it holds finished jobs."""
    out, work = Path(out), work_folder(out)
    if out.exists() and any(out.iterdir()) and not (out / bundle_io.MANIFEST).is_file():
        raise UserError(f"--out {out}: folder exists and is not a bundle; choose an empty or new folder")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(default_mode(directory=True))
    with open(work / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--out {out}: another fit is writing to it ({work} is locked)") from None
        store = JobStore(work / "jobs")
        finished = len(store.records())
        if finished and not resume:
            raise UserError(f"--out {out}: an interrupted fit left {finished} finished job(s) in {work}; add --resume "
                            "to continue it, or delete that folder to start over")
        if resume and not finished:
            echo("--resume: no finished job to resume; running every job")
        try:
            yield work
        except BaseException:
            kept = len(store.records())
            if kept:
                echo(f"{kept} finished job(s) kept in {work}: rerun the same command with --resume to continue")
            else:
                shutil.rmtree(work, ignore_errors=True)
            raise


def base_name(model: str) -> str:
    """A base model's name in the bundle: its architecture, or module.function for your own."""
    return model.replace(":", ".")


def _base_entry(work: Path, model: str, files: list[str], cfg: FitConfig) -> dict:
    spec = get_spec(model)
    return {
        "name": base_name(model),
        "architecture": spec.name,
        "preprocessing": spec.preprocessing,
        "weights": cfg.weights_for(model),
        "files": files,
        "history": bundle_io.history_path(work, base_name(model)).relative_to(work).as_posix(),
    }


def _load_training_data(data_dir: Path, cfg: FitConfig, echo: Echo) -> tuple[ImageSet, np.ndarray, list, np.ndarray | None]:
    """The labelled images, their pixels, those skipped, and their groups (None without --group-column)."""
    images = read_training_set(data_dir)
    need = minimum_per_class(cfg.protocol, cfg.holdout_fraction, cfg.validation_fraction, cfg.folds)
    check_class_counts(images.labels, images.classes, need, f"--protocol {cfg.protocol}")
    images, pixels, bad = load_pixels(images, cfg.image_size, cfg.on_bad_image)
    for _, reason in bad:
        echo(f"skipped {reason}")
    check_class_counts(images.labels, images.classes, need, f"--protocol {cfg.protocol}")
    groups = read_groups(data_dir, images, cfg.group_column) if cfg.group_column else None
    return images, pixels, bad, groups


def _summary_line(desc: str, history: dict, oof_accuracy: float | None) -> str:
    line = (f"{desc}: best epoch {history['best_epoch'] + 1}/{len(history['loss'])}, "
            f"val accuracy {history['best']['val_accuracy']:.4f}")
    return line + (f", OOF accuracy {oof_accuracy:.4f}" if oof_accuracy is not None else "")


def plan_jobs(cfg: FitConfig, splits: list[Split], refit: Split | None) -> list[Job]:
    """One job per (base model, split), and one refit per base model with ``--final refit``.

    Seeds: ``seed + 1000 * model index + split index`` (the refit's split index is K),
    so every job is the same however, wherever and in whichever order jobs run.
    """
    jobs = []
    for m, model in enumerate(cfg.models):
        name, weights, seed = base_name(model), cfg.weights_for(model), cfg.seed + 1000 * m
        for k, split in enumerate(splits):
            jobs.append(Job(model, name, seed + k, split, weights, None if cfg.protocol == "holdout" else k))
        if refit is not None:
            jobs.append(Job(model, name, seed + len(splits), refit, weights, refit=True))
    return jobs


def job_settings(cfg: FitConfig) -> JobSettings:
    views = cfg.tta.view_list(cfg.image_size, max(cfg.tta.views, cfg.tta_diagnostic_views))
    return JobSettings(cfg.image_size, cfg.head, cfg.dropout, cfg.deterministic, cfg.mixed_precision, cfg.train,
                       tuple(views))


def _job_summary(job: Job, result: JobResult, labels: np.ndarray, tta: TTAPolicy, served: int) -> str:
    if job.refit:
        return _summary_line(f"{job.name} refit on all images", result.history, None)
    merged = served_result(result.per_view[None, :served], tta).merged[0]
    return _summary_line(job.desc, result.history, score(merged, labels[job.split.oof])["accuracy"])


def _run_jobs(jobs: list[Job], keys: dict[str, str], store: JobStore, inputs: JobInputs, cfg: FitConfig,
              echo: Echo) -> None:
    """Run the jobs not finished yet, storing each as it ends; then raise the first failure, if any."""
    records = store.records()
    todo = [job for job in jobs if not store.finished(job, keys[job.id], records)]
    if len(todo) < len(jobs):
        echo(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} jobs already done")
    if not todo:
        return
    if cfg.cluster.executor == "ray":
        echo(f"running {len(todo)} jobs on Ray, {cfg.cluster.cpus_per_job:g} CPU and {cfg.cluster.gpus_per_job:g} "
             f"GPU each, up to {cfg.cluster.max_retries} retries when a worker dies")
    redone = [job.id for job in todo if job.id in records]
    if redone:
        echo(f"{len(redone)} finished job(s) were made with other settings, data or code, or their files changed; "
             f"they run again: {', '.join(redone)}")
    progress = Progress(len(jobs), len(jobs) - len(todo), echo)
    served = len(cfg.tta.view_list(cfg.image_size))
    failure = None
    with closing(run_jobs(todo, inputs, progress, cfg.cluster)) as outcomes:  # closing it cancels Ray's tasks
        for job, outcome in outcomes:
            if isinstance(outcome, Exception):
                progress.failed(job, outcome)
                if isinstance(outcome, UserError):  # bad settings or input: every job would say the same
                    raise outcome
                failure = failure or outcome  # the others still run; only the first error is kept
                continue
            store.save(job, keys[job.id], outcome)
            progress.finished(job, _job_summary(job, outcome, inputs.labels, cfg.tta, served))
    if failure is not None:
        raise failure


def _assemble_base_models(jobs: list[Job], store: JobStore, work: Path, cfg: FitConfig, shape: tuple[int, int],
                          diag: np.ndarray, refit: bool) -> tuple[np.ndarray, np.ndarray, list[dict], dict]:
    """Put the stored jobs' models and histories in the bundle; gather their OOF rows.

    Returns each base model's served views on every OOF row (M, T, N, C), all views on
    the TTA-diagnostic rows (M, V, D, C), the manifest's base-model entries and the
    validation scores per fold.
    """
    n_images, n_classes = shape
    served = len(cfg.tta.view_list(cfg.image_size))
    views = len(job_settings(cfg).views)
    oof_views = np.zeros((len(cfg.models), served, n_images, n_classes), np.float32)
    diag_views = np.zeros((len(cfg.models), views, len(diag), n_classes), np.float32)
    base_entries, validation = [], {}
    for m, model in enumerate(cfg.models):
        name, files, histories = base_name(model), [], []
        for job in (j for j in jobs if j.name == name):
            history, per_view = store.load(job)
            if job.refit:  # the served model: the fold models only made the OOF rows
                files, histories = [store.place_model(job, work)], [*histories, {**history, "refit": True}]
                continue
            oof_views[m][:, job.split.oof] = per_view[:served]
            kept = np.isin(job.split.oof, diag)
            diag_views[m][:, np.searchsorted(diag, job.split.oof[kept])] = per_view[:, kept]
            files += [] if refit else [store.place_model(job, work)]
            histories.append(history)
        bundle_io.write_json(bundle_io.history_path(work, name), {"model": name, "folds": histories})
        validation[name] = [h["best"] for h in histories]
        base_entries.append(_base_entry(work, model, files, cfg))
    return oof_views, diag_views, base_entries, validation


def fit(data_dir: Path, out: Path, cfg: FitConfig, echo: Echo = print, resume: bool = False) -> dict:
    """Run the whole fit; return the manifest of the bundle written to ``out``.

    ``resume``: keep the finished jobs of an interrupted fit to ``out`` (those whose
    settings, seed, rows and data are unchanged) and run only the others.
    """
    started, out = time.monotonic(), Path(out)
    if cfg.cluster.executor == "ray":
        check_ray(cfg.cluster.address)  # before minutes of decoding images
    with _locked_work_folder(out, resume, echo) as work_root:
        set_numerics(cfg.deterministic, cfg.mixed_precision)
        images, pixels, bad, groups = _load_training_data(data_dir, cfg, echo)
        labels, classes = images.labels, images.classes
        echo(f"{len(labels)} images, {len(classes)} classes, protocol {cfg.protocol}, models {', '.join(cfg.models)}"
             + (f", grouped by {cfg.group_column} ({len(np.unique(groups))} groups)" if groups is not None else ""))
        splits = make_splits(
            labels, cfg.protocol, cfg.holdout_fraction, cfg.validation_fraction, cfg.folds, cfg.seed, groups, classes
        )
        folds = fold_assignment(splits, len(labels))
        assignment = fold_hash(images.ids, folds)
        refit = cfg.protocol == "kfold" and cfg.final == "refit"
        jobs = plan_jobs(cfg, splits, refit_split(labels, cfg.validation_fraction, cfg.seed, groups) if refit else None)
        settings = job_settings(cfg)
        data_key = data_fingerprint(images.ids, labels, pixels)
        keys = {job.id: job.key(settings, data_key) for job in jobs}
        store = JobStore(work_root / "jobs")
        _run_jobs(jobs, keys, store, JobInputs(pixels, labels, len(classes), settings), cfg, echo)

        work = work_root / "bundle"  # assembled afresh from the stored jobs
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        bundle_io.save_folds(work, images.ids, folds, groups)
        served = len(cfg.tta.view_list(cfg.image_size))
        diag = diagnostic_rows(np.concatenate([s.oof for s in splits]), cfg.seed)
        oof_views, diag_views, base_entries, validation = _assemble_base_models(
            jobs, store, work, cfg, (len(labels), len(classes)), diag, refit)
        names = [base_name(model) for model in cfg.models]
        records = store.records()
        job_runs = {job.id: {k: records[job.id][k] for k in ("seconds", "worker", "threads")} for job in jobs}

        tta, diagnostics = tune_and_measure(diag_views, labels[diag], names, served, cfg.tta)
        for line in diagnostics["summary"]:
            echo(line)
        bundle_io.write_json(work / bundle_io.TTA_DIAGNOSTICS, diagnostics)
        rows = np.sort(np.concatenate([s.oof for s in splits]))
        result = served_result(oof_views[:, :, rows], tta)  # TTA-merged exactly as served, adaptive included
        oof = {
            "probabilities": result.merged,
            "disagreement": result.fold_disagreement[0].astype(np.float32),
            "labels": labels[rows],
            "ids": np.array([images.ids[i] for i in rows]),
            "folds": folds[rows],
            "models": np.array(names),
            "fold_hashes": np.array([assignment] * len(names)),
            **({"groups": groups[rows]} if groups is not None else {}),
        }
        bundle_io.save_oof(work, oof)
        meta_entry = fit_meta(work, oof, MetaSettings.from_config(cfg.as_dict()), assignment)
        echo(describe(meta_entry))

        metrics = {
            "oof_rows": int(len(rows)),
            "oof": {
                **{name: score(result.merged[m], oof["labels"]) for m, name in enumerate(names)},
                "mean": score(result.merged.mean(axis=0), oof["labels"]),
            },
            "validation": validation,
            "fit_seconds": round(time.monotonic() - started, 1),
            "jobs": job_runs,  # where each job ran, for how long, on how many threads
        }

        manifest = bundle_io.write_manifest(work, {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": classes,
            "image_size": cfg.image_size,
            "data": {
                "source": str(Path(data_dir).resolve()),
                "images": int(len(labels)),
                "per_class": dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist())),
                "skipped": [str(p) for p, _ in bad],
            },
            "base_models": base_entries,
            "meta_learner": meta_entry,
            "tta": tta.as_dict(),
            "protocol": {
                "name": cfg.protocol,
                "holdout_fraction": cfg.holdout_fraction if cfg.protocol == "holdout" else None,
                "folds": cfg.folds if cfg.protocol == "kfold" else None,
                "validation_fraction": cfg.validation_fraction,
                "group_column": cfg.group_column or None,
                "fold_file": bundle_io.FOLDS_FILE,
                "fold_hash": assignment,
                "final_models": "holdout-trained" if cfg.protocol == "holdout" else cfg.final,
            },
            "config": cfg.as_dict(),
            "metrics": metrics,
            "seeds": {"seed": cfg.seed, "per_model": "seed + 1000 * model index + fold (refit: fold = K)"},
            "versions": bundle_io.library_versions(),
        })
        write_report(work)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
        shutil.rmtree(work_root)  # still locked: a fit to the same --out waits for this one to end
    return manifest
