"""``stacking fit``: train base models, make OOF predictions, select the meta-learner, write the bundle.

A fit is a set of independent jobs, one per (base model, fold) (``stacking.training.jobs``),
run by an executor (here, or on a Ray cluster: ``stacking.training.executors``), then the meta
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
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models.registry import get_spec, is_custom
from stacking import bundle as bundle_io
from stacking.bundle import Trust
from stacking.bundle.manifest import BaseModelEntry, Manifest, MetaLearnerEntry, RuntimeEntry
from stacking.bundle.signing import check_signing_key, sign_bundle
from stacking.choices import Executor, Final, Precision, Protocol, Quantize
from stacking.cluster import check_ray
from stacking.data.cache import PixelCache
from stacking.data.datasets import ImageSet, load_pixels, read_groups, read_training_set
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.files import default_mode
from stacking.inference.tta import TTAPolicy, View, served_result
from stacking.inference.tta_diagnostics import diagnostic_rows, tune_and_measure
from stacking.meta.learners import at_chance, score
from stacking.reporting.report import write_report
from stacking.runtime import EXPORTED, TF, export_litert
from stacking.training.config import FitConfig, ModelConfig
from stacking.training.costing import add_serving
from stacking.training.executors import JobInputs, Progress, run_jobs
from stacking.training.export import (
    CALIBRATION_IMAGES,
    Parity,
    calibration_rows,
    choose,
    exported_answers,
    int8_verdict,
    keras_answers,
    refuse,
    time_runtimes,
)
from stacking.training.jobs import Job, JobResult, JobSettings, JobStore, data_fingerprint, set_numerics
from stacking.training.meta_step import MetaSettings, describe, fit_meta
from stacking.training.protocols import (
    Split,
    check_class_counts,
    fold_assignment,
    fold_hash,
    make_splits,
    minimum_per_class,
    refit_split,
)

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
            raise UserError(
                f"--out {out}: an interrupted fit left {finished} finished job(s) in {work}; add --resume "
                "to continue it, or delete that folder to start over"
            )
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


class TrainingData(NamedTuple):
    images: ImageSet
    pixels: Pixels  # every image at each base model's size, read from the pixel cache as needed
    skipped: list  # [(path, reason)] of unreadable images left out
    groups: np.ndarray | None  # None without --group-column


def _load_training_data(data_dir: Path, cfg: FitConfig, cache: PixelCache, echo: Echo) -> TrainingData:
    images = read_training_set(data_dir)
    need = minimum_per_class(cfg.protocol, cfg.holdout_fraction, cfg.validation_fraction, cfg.folds)
    check_class_counts(images.labels, images.classes, need, f"--protocol {cfg.protocol}")
    images, pixels, bad = load_pixels(images, cfg.sizes, cfg.on_bad_image, cache, echo)
    for _, reason in bad:
        echo(f"skipped {reason}")
    check_class_counts(images.labels, images.classes, need, f"--protocol {cfg.protocol}")
    groups = read_groups(data_dir, images, cfg.group_column) if cfg.group_column else None
    echo(
        f"{len(images.labels)} images, {len(images.classes)} classes, protocol {cfg.protocol}, models "
        f"{', '.join(f'{m.name} ({m.architecture} at {m.image_size} px, weights {_source(m)})' for m in cfg.models)}"
        + (f", grouped by {cfg.group_column} ({len(np.unique(groups))} groups)" if groups is not None else "")
    )
    return TrainingData(images, pixels, bad, groups)


def _summary_line(desc: str, history: dict, oof_accuracy: float | None) -> str:
    line = (
        f"{desc}: best epoch {history['best_epoch'] + 1}/{len(history['loss'])}, "
        f"val accuracy {history['best']['val_accuracy']:.4f}"
    )
    return line + (f", OOF accuracy {oof_accuracy:.4f}" if oof_accuracy is not None else "")


def _source(member: ModelConfig) -> str:
    """A member's weights as the report and the log name them: none, imagenet, or the file's name."""
    file = member.weights_file
    return str(member.weights) if file is None else file.name


def oof_views(cfg: FitConfig, member: ModelConfig) -> list[View]:
    """The views a job predicts on its OOF rows, at the member's size: the served ones and the diagnostics'."""
    return cfg.tta.view_list(member.image_size, max(cfg.tta.views, cfg.tta_diagnostic_views))


def plan_jobs(cfg: FitConfig, splits: list[Split], refit: Split | None) -> list[Job]:
    """One job per (base model, split), and one refit per base model with ``--final refit``.

    Seeds: ``seed + 1000 * model index + split index`` (the refit's split index is K),
    so every job is the same however, wherever and in whichever order jobs run.
    """
    jobs = []
    for m, member in enumerate(cfg.models):
        seed, views = cfg.seed + 1000 * m, tuple(oof_views(cfg, member))
        file = member.weights_file  # its content is part of every job's key: hashed once here
        sha = None if file is None else bundle_io.sha256_file(file)
        for k, split in enumerate(splits):
            fold = None if cfg.protocol == Protocol.HOLDOUT else k
            jobs.append(Job(member, seed + k, split, views, fold, weights_sha256=sha))
        if refit is not None:
            jobs.append(Job(member, seed + len(splits), refit, views, refit=True, weights_sha256=sha))
    return jobs


def job_settings(cfg: FitConfig) -> JobSettings:
    return JobSettings(cfg.deterministic, cfg.mixed_precision)


def _job_summary(job: Job, result: JobResult, labels: np.ndarray, tta: TTAPolicy, served: int) -> str:
    if job.refit:
        return _summary_line(f"{job.name} refit on all images", result.history, None)
    merged = served_result(result.per_view[None, :served], tta).merged[0]
    return _summary_line(job.desc, result.history, score(merged, labels[job.split.oof])["accuracy"])


def _run_jobs(
    jobs: list[Job], keys: dict[str, str], store: JobStore, inputs: JobInputs, cfg: FitConfig, echo: Echo
) -> None:
    """Run the jobs not finished yet, storing each as it ends; then raise the first failure, if any."""
    records = store.records()
    todo = [job for job in jobs if not store.finished(job, keys[job.id], records)]
    if len(todo) < len(jobs):
        echo(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} jobs already done")
    if not todo:
        return
    if cfg.cluster.executor == Executor.RAY:
        echo(
            f"running {len(todo)} jobs on Ray, {cfg.cluster.cpus_per_job:g} CPU and {cfg.cluster.gpus_per_job:g} "
            f"GPU each, up to {cfg.cluster.max_retries} retries when a worker dies"
        )
    redone = [job.id for job in todo if job.id in records]
    if redone:
        echo(
            f"{len(redone)} finished job(s) were made with other settings, data or code, or their files changed; "
            f"they run again: {', '.join(redone)}"
        )
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


class Plan(NamedTuple):
    splits: list[Split]
    folds: np.ndarray  # each training image's fold (-1: trained on by every model, never predicted)
    fold_hash: str
    jobs: list[Job]
    keys: dict[str, str]  # each job's key: what it computes from


def _plan(data: TrainingData, cfg: FitConfig) -> Plan:
    labels = data.images.labels
    splits = make_splits(
        labels,
        cfg.protocol,
        cfg.holdout_fraction,
        cfg.validation_fraction,
        cfg.folds,
        cfg.seed,
        data.groups,
        data.images.classes,
    )
    folds = fold_assignment(splits, len(labels))
    refit = cfg.protocol == Protocol.KFOLD and cfg.final == Final.REFIT
    jobs = plan_jobs(
        cfg, splits, refit_split(labels, cfg.validation_fraction, cfg.seed, data.groups) if refit else None
    )
    settings = job_settings(cfg)
    data_keys = {size: data_fingerprint(data.images.ids, labels, data.pixels.at(size)) for size in cfg.sizes}
    return Plan(
        splits,
        folds,
        fold_hash(data.images.ids, folds),
        jobs,
        {job.id: job.key(settings, data_keys[job.member.image_size]) for job in jobs},
    )


class BaseModels(NamedTuple):
    """The base models as placed in the bundle, with what their jobs predicted."""

    oof_views: np.ndarray  # (M, T, N, C) each model's served views on every training image (zeros where none)
    diag_rows: np.ndarray  # the OOF rows the TTA diagnostics measure
    diag_views: np.ndarray  # (M, V, D, C) every measured view on those rows
    entries: list[BaseModelEntry]
    validation: dict[str, list[dict]]  # the best epoch's validation scores per fold


def _assemble_base_models(
    plan: Plan, store: JobStore, work: Path, cfg: FitConfig, data: TrainingData, echo: Echo
) -> BaseModels:
    """Put the stored jobs' models (and their exports) and histories in the bundle; gather the served OOF rows."""
    n_images, n_classes = len(data.images.labels), len(data.images.classes)
    served = len(cfg.tta.view_list(cfg.image_size))
    diag = diagnostic_rows(np.concatenate([s.oof for s in plan.splits]), cfg.seed)
    served_views = np.zeros((len(cfg.models), served, n_images, n_classes), np.float32)
    diag_views = np.zeros((len(cfg.models), len(oof_views(cfg, cfg.models[0])), len(diag), n_classes), np.float32)
    entries, validation = [], {}
    for m, member in enumerate(cfg.models):
        name = member.name
        jobs = [j for j in plan.jobs if j.name == name]
        served_jobs = [j for j in jobs if j.refit] or jobs  # a refit is served; the fold models only made OOF rows
        stored = {job.id: store.load(job) for job in jobs}
        per_view = {job.id: stored[job.id][1] for job in jobs if not job.refit}
        runtime = None
        if cfg.runtime != TF:
            runtime, exported = _export(member, jobs, served_jobs, store, per_view, work, cfg, data, diag, echo)
            if runtime.served != TF:
                per_view = exported
        for job in jobs:
            if job.refit:
                continue
            served_views[m][:, job.split.oof] = per_view[job.id][:served]
            kept = np.isin(job.split.oof, diag)
            diag_views[m][:, np.searchsorted(diag, job.split.oof[kept])] = per_view[job.id][:, kept]
        histories = [{**stored[job.id][0], "refit": True} if job.refit else stored[job.id][0] for job in jobs]
        spec = get_spec(member.architecture)
        entries.append(
            BaseModelEntry(
                name=name,
                architecture=spec.name,
                image_size=member.image_size,
                preprocessing=spec.preprocessing,
                weights=member.start and _source(member),
                weights_sha256=jobs[0].weights_sha256,
                files=[bundle_io.save_base_model(work, name, job.fold, store.model_file(job)) for job in served_jobs],
                history=bundle_io.save_history(work, name, histories),
                runtime=runtime,
            )
        )
        validation[name] = [h["best"] for h in histories]
    return BaseModels(served_views, diag, diag_views, entries, validation)


class Exports(NamedTuple):
    """One base model's exports, job by job: the Keras models, the files and their answers on the job's OOF views."""

    models: dict[str, object]
    files: dict[str, bytes]
    answers: dict[str, np.ndarray]  # fold jobs only (a refit has no OOF rows)


def _export(
    member: ModelConfig,
    jobs: list[Job],
    served_jobs: list[Job],
    store: JobStore,
    keras_views: dict[str, np.ndarray],
    work: Path,
    cfg: FitConfig,
    data: TrainingData,
    diag: np.ndarray,
    echo: Echo,
) -> tuple[RuntimeEntry, dict[str, np.ndarray]]:
    """Export each job's model, check it against Keras, quantize it if asked, time the runtimes, choose one.

    ``keras_views``: each fold job's own OOF answers (Keras'). Returns the manifest's entry and the served
    files' answers on each fold job's OOF views.
    """
    name, size = member.name, member.image_size
    try:
        fp32, parity = _convert(member, jobs, store, keras_views, cfg, data, diag)
    except ExportFailed as exc:
        refuse(cfg.runtime, name, str(exc))
        echo(f"{name}: not exported to {EXPORTED} ({exc}); served by TensorFlow")
        return RuntimeEntry(name=EXPORTED, files=[], served=TF, parity=None, timing=None, refused=str(exc)), {}
    problem = parity.problem()
    if problem is not None:
        refuse(cfg.runtime, name, problem)
        echo(f"{name}: {EXPORTED} export refused ({problem}); served by TensorFlow")
        return RuntimeEntry(
            name=EXPORTED, files=[], served=TF, parity=parity.as_dict(), timing=None, refused=problem
        ), {}
    int8, verdict = _quantize(jobs, fp32, cfg, data) if cfg.quantize == Quantize.INT8 else (None, None)
    served_views = len(cfg.tta.view_list(size))
    timing = time_runtimes(
        [fp32.models[j.id] for j in served_jobs],
        [fp32.files[j.id] for j in served_jobs],
        size,
        served_views,
        int8 and [int8.files[j.id] for j in served_jobs],
    )
    runtime, precision = choose(cfg.runtime, timing, bool(verdict and verdict["kept"]))
    chosen = int8 if precision == Precision.INT8 else fp32
    int8_note = (
        ""
        if verdict is None
        else (
            f"; INT8 {timing[f'{EXPORTED}_int8_ms']:.2f} ms, {'kept' if verdict['kept'] else 'not kept'}: "
            f"{verdict['reason']}"
        )
    )
    echo(
        f"{name}: {EXPORTED} {timing[f'{EXPORTED}_ms']:.2f} ms, TensorFlow {timing['tf_ms']:.2f} ms per call of "
        f"{timing['call_rows']} image-views; max |p| difference {parity.max_abs_diff:.2g}{int8_note}; served by "
        f"{'TensorFlow' if runtime == TF else f'{EXPORTED} {precision}'}"
    )
    paths = [bundle_io.save_runtime_file(work, name, job.fold, chosen.files[job.id]) for job in served_jobs]
    int8_entry = (
        None if verdict is None else {"calibration_images": min(CALIBRATION_IMAGES, len(jobs[0].split.fit)), **verdict}
    )
    return RuntimeEntry(
        name=EXPORTED,
        files=paths,
        served=runtime,
        parity=parity.as_dict(),
        timing=timing,
        refused=None,
        precision=precision,
        int8=int8_entry,
    ), chosen.answers


class ExportFailed(Exception):
    """The converter could not export a model (an operator LiteRT lacks, say)."""


def _convert(
    member: ModelConfig,
    jobs: list[Job],
    store: JobStore,
    keras_views: dict[str, np.ndarray],
    cfg: FitConfig,
    data: TrainingData,
    diag: np.ndarray,
) -> tuple[Exports, Parity]:
    """Every job's model as a float32 file, and how closely the files agree with Keras.

    A fold job is compared on its own OOF images and views (Keras' answers: ``keras_views``,
    the job's stored ones); a refit, trained on every image, on the TTA diagnostics' rows.
    """
    import keras

    from models.registry import import_custom_module

    if is_custom(member.architecture):
        import_custom_module(member.architecture)
    size, views = member.image_size, oof_views(cfg, member)
    pixels = data.pixels.at(size)
    parity, exports = Parity(0, 0.0, 0), Exports({}, {}, {})
    for job in jobs:
        trained = keras.models.load_model(store.model_file(job), compile=False, safe_mode=True)
        try:
            content = export_litert(trained)
        except Exception as exc:  # the converter raises many types; any of them means "not exportable"
            text = str(exc).strip()
            raise ExportFailed(f"conversion failed: {text.splitlines()[-1] if text else type(exc).__name__}") from exc
        if job.refit:
            checked = views[:1]
            parity = parity.merge(
                Parity.of(
                    keras_answers(trained, pixels[diag], checked, size),
                    exported_answers(content, pixels[diag], checked, size),
                )
            )
        else:
            exports.answers[job.id] = exported_answers(content, pixels[job.split.oof], views, size)
            parity = parity.merge(Parity.of(keras_views[job.id], exports.answers[job.id]))
        exports.models[job.id], exports.files[job.id] = trained, content
    return exports, parity


def _quantize(jobs: list[Job], fp32: Exports, cfg: FitConfig, data: TrainingData) -> tuple[Exports, dict]:
    """Every job's model as an INT8 file calibrated on its own training images, and the verdict on the OOF rows.

    The verdict compares both exports' served views on every fold job's OOF rows (a
    refit's INT8 file is judged by its fold models', as its OOF rows are theirs).
    """
    member = jobs[0].member
    size, views = member.image_size, oof_views(cfg, member)
    pixels, served = data.pixels.at(size), len(cfg.tta.view_list(size))
    int8 = Exports(fp32.models, {}, {})
    for job in jobs:
        calibration = calibration_rows(pixels[job.split.fit], cfg.seed)
        int8.files[job.id] = export_litert(fp32.models[job.id], calibration)
        if not job.refit:
            int8.answers[job.id] = exported_answers(int8.files[job.id], pixels[job.split.oof], views, size)
    folds = [job for job in jobs if not job.refit]
    labels = np.concatenate([data.images.labels[job.split.oof] for job in folds])
    fp32_views, int8_views = (
        np.concatenate([e.answers[job.id][:served] for job in folds], axis=1) for e in (fp32, int8)
    )
    return int8, int8_verdict(labels, fp32_views, int8_views)


def _served_oof(
    base: BaseModels, plan: Plan, data: TrainingData, cfg: FitConfig, work: Path, echo: Echo
) -> tuple[TTAPolicy, dict[str, np.ndarray]]:
    """Tune the served TTA on the diagnostic rows; return it and the OOF arrays merged exactly as it serves."""
    names = [e.name for e in base.entries]
    served = base.oof_views.shape[1]
    tta, diagnostics = tune_and_measure(base.diag_views, data.images.labels[base.diag_rows], names, served, cfg.tta)
    for line in diagnostics["summary"]:
        echo(line)
    bundle_io.save_tta_diagnostics(work, diagnostics)
    rows = np.sort(np.concatenate([s.oof for s in plan.splits]))
    result = served_result(base.oof_views[:, :, rows], tta)  # adaptive TTA included
    oof = {
        "probabilities": result.merged,
        "disagreement": result.fold_disagreement[0].astype(np.float32),
        "labels": data.images.labels[rows],
        "ids": np.array([data.images.ids[i] for i in rows]),
        "folds": plan.folds[rows],
        "models": np.array(names),
        "fold_hashes": np.array([plan.fold_hash] * len(names)),
        "views": base.oof_views[:, :, rows],
        "views_used": result.views_used,
        **({"groups": data.groups[rows]} if data.groups is not None else {}),
    }
    bundle_io.save_oof(work, oof)
    return tta, oof


def chance_warnings(oof: dict[str, np.ndarray]) -> list[str]:
    """A warning for each base model no better than naming the commonest class on its OOF rows."""
    warnings = []
    for name, probs in zip(oof["models"], oof["probabilities"]):
        low, chance = at_chance(probs, oof["labels"])
        if low:
            accuracy = score(probs, oof["labels"])["accuracy"]
            warnings.append(
                f"base model {str(name)!r} answers at chance on its OOF rows (accuracy {accuracy:.4f}; naming the "
                f"commonest class scores {chance:.4f}): it learnt nothing its inference-mode network keeps. Train it "
                "longer, from pretrained weights, or leave it out: it adds cost and no accuracy"
            )
    return warnings


def _manifest(
    data_dir: Path,
    cfg: FitConfig,
    data: TrainingData,
    plan: Plan,
    base: BaseModels,
    tta: TTAPolicy,
    oof: dict[str, np.ndarray],
    meta: MetaLearnerEntry,
    job_runs: dict,
    seconds: float,
) -> Manifest:
    """Everything the bundle says of itself; ``files`` is filled in when it is written."""
    labels, classes = data.images.labels, data.images.classes
    names = [e.name for e in base.entries]
    return Manifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=classes,
        image_size=cfg.image_size,
        data={
            "source": str(Path(data_dir).resolve()),
            "images": int(len(labels)),
            "per_class": dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist())),
            "skipped": [str(p) for p, _ in data.skipped],
        },
        base_models=base.entries,
        meta_learner=meta,
        tta=tta.as_dict(),
        protocol={
            "name": cfg.protocol,
            "holdout_fraction": cfg.holdout_fraction if cfg.protocol == Protocol.HOLDOUT else None,
            "folds": cfg.folds if cfg.protocol == Protocol.KFOLD else None,
            "validation_fraction": cfg.validation_fraction,
            "group_column": cfg.group_column or None,
            "fold_file": bundle_io.FOLDS_FILE,
            "fold_hash": plan.fold_hash,
            "final_models": "holdout-trained" if cfg.protocol == Protocol.HOLDOUT else cfg.final,
        },
        config=cfg.as_dict(),
        metrics={
            "oof_rows": int(len(oof["labels"])),
            "oof": {
                **{name: score(oof["probabilities"][m], oof["labels"]) for m, name in enumerate(names)},
                "mean": score(oof["probabilities"].mean(axis=0), oof["labels"]),
            },
            "validation": base.validation,
            "fit_seconds": round(seconds, 1),
            "jobs": job_runs,  # where each job ran, for how long, on how many threads
            "warnings": chance_warnings(oof),
        },
        seeds={"seed": cfg.seed, "per_model": "seed + 1000 * model index + fold (refit: fold = K)"},
        versions=bundle_io.library_versions(),
        custom_modules=bundle_io.custom_modules([e.architecture for e in base.entries]),
        files={},
    )


def _move_into_place(work: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)


def check_starts(cfg: FitConfig, offline: bool, echo: Echo) -> None:
    """Every pretrained member's weights, before any work: ImageNet's fetched into Keras' cache (or, ``offline``,
    refused naming the file), a weights file checked against its architecture at its size."""
    from models.weights import WeightsError, check_start

    for member in cfg.models:
        if member.start is None:
            continue
        try:
            check_start(member.architecture, member.image_size, member.start, offline)
        except WeightsError as exc:
            raise UserError(f"model {member.name!r} weights {member.weights!r}: {exc}") from None
        file = member.weights_file
        echo(f"{member.name}: starts from " + ("ImageNet's weights" if file is None else str(file)))


def fit(
    data_dir: Path,
    out: Path,
    cfg: FitConfig,
    echo: Echo = print,
    resume: bool = False,
    sign_key: Path | None = None,
    offline: bool = False,
    cache: PixelCache | None = None,
) -> Manifest:
    """Run the whole fit; return the manifest of the bundle written to ``out``.

    ``resume``: keep the finished jobs of an interrupted fit to ``out`` (those whose
    settings, seed, rows and data are unchanged) and run only the others.
    ``sign_key``: sign the bundle at the end with this private key (checked first).
    ``offline``: a download Keras would need (ImageNet weights) is an error naming the file, before any work.
    ``cache``: where decoded pixels are kept (default: ``PixelCache()``, the user's cache directory).
    """
    started, out = time.monotonic(), Path(out)
    if cfg.cluster.executor == Executor.RAY:
        check_ray(cfg.cluster.address)  # before minutes of decoding images
    if sign_key is not None:
        check_signing_key(sign_key)  # before hours of training
    check_starts(cfg, offline, echo)
    with _locked_work_folder(out, resume, echo) as work_root:
        set_numerics(cfg.deterministic, cfg.mixed_precision)
        data = _load_training_data(data_dir, cfg, cache or PixelCache(), echo)
        plan = _plan(data, cfg)
        store = JobStore(work_root / "jobs")
        inputs = JobInputs(data.pixels, data.images.labels, len(data.images.classes), job_settings(cfg), offline)
        _run_jobs(plan.jobs, plan.keys, store, inputs, cfg, echo)

        work = work_root / "bundle"  # assembled afresh from the stored jobs
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        bundle_io.save_folds(work, data.images.ids, plan.folds, data.groups)
        base = _assemble_base_models(plan, store, work, cfg, data, echo)
        tta, oof = _served_oof(base, plan, data, cfg, work, echo)
        for warning in chance_warnings(oof):
            echo(f"WARNING: {warning}")
        meta = fit_meta(work, oof, MetaSettings.from_config(cfg.as_dict()), plan.fold_hash)
        echo(describe(meta))
        manifest = bundle_io.write_manifest(
            work,
            _manifest(
                data_dir, cfg, data, plan, base, tta, oof, meta, store.runs(plan.jobs), time.monotonic() - started
            ),
        )
        rows = np.sort(np.concatenate([s.oof for s in plan.splits]))
        manifest = add_serving(work, manifest, data.pixels[rows], cfg.seed, Trust(custom_code=True), echo)
        write_report(work, manifest)
        _move_into_place(work, out)
        shutil.rmtree(work_root)  # still locked: a fit to the same --out waits for this one to end
    if sign_key is not None:
        echo(f"signed: {sign_bundle(out, sign_key)}")
    return manifest
