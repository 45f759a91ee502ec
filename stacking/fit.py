"""``stacking fit``: train base models, make OOF predictions, select the meta-learner, write the bundle.

The bundle is built in a temporary sibling folder and moved into place at the
end, so an interrupted fit never leaves a half-written bundle behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from models import create_model, get_spec
from models.training import train_model
from stacking import bundle as bundle_io
from stacking.config import FitConfig
from stacking.datasets import ImageSet, load_pixels, read_groups, read_training_set
from stacking.errors import UserError
from stacking.files import default_mode
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
from stacking.tta import TTAForward, served_result
from stacking.tta_diagnostics import diagnostic_rows, tune_and_measure

Echo = Callable[[str], None]


def _prepare_output(out: Path) -> Path:
    """A fresh work folder beside ``out``; ``out`` itself may be absent, empty or an old bundle."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / bundle_io.MANIFEST).is_file():
        raise UserError(f"--out {out}: folder exists and is not a bundle; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    work.chmod(default_mode(directory=True))
    return work


def _set_numerics(cfg: FitConfig) -> None:
    """Process-wide switches: deterministic ops (CPU default) and mixed precision (GPU users)."""
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("mixed_float16" if cfg.mixed_precision else "float32")


def _build_model(name: str, n_classes: int, cfg: FitConfig, seed: int) -> keras.Model:
    """A freshly initialised base model; seeding first fixes its initial weights."""
    keras.utils.set_random_seed(seed)  # initial weights, dropout and augmentation
    weights = cfg.weights_for(name)
    try:
        return create_model(name, n_classes, cfg.image_size, weights=weights, head=cfg.head, dropout=cfg.dropout)
    except ValueError as exc:  # a custom builder that cannot be imported or returns the wrong shape
        raise UserError(f"--models: {exc}") from None
    except Exception as exc:  # keras raises plain Exceptions when the weights download fails
        if weights is None:
            raise
        raise UserError(
            f"--weights {weights}: could not load them for {name!r} ({exc}); without the internet, put the "
            "weight files in ~/.keras/models/ first, or train from scratch with --weights none"
        ) from None


def _train(name: str, seed: int, split: Split, path: Path, data: tuple, cfg: FitConfig, desc: str):
    """Train one base model on ``split.fit``, watching ``split.val``; return (model, history)."""
    pixels, labels, n_classes = data
    model = _build_model(name, n_classes, cfg, seed)
    # A live bar on a terminal only (disable=None); fit() prints a summary line in any case.
    with tqdm(total=cfg.train.epochs, desc=desc, unit="epoch", leave=False, disable=None) as bar:
        return train_model(
            model,
            (pixels[split.fit], labels[split.fit]),
            (pixels[split.val], labels[split.val]),
            cfg.train,
            path,
            seed=seed,
            fine_tune=get_spec(name).block_pattern if cfg.weights_for(name) else None,
            on_epoch_end=lambda _, logs: (bar.update(), bar.set_postfix(val_acc=f"{logs['val_accuracy']:.3f}")),
        )


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


def fit(data_dir: Path, out: Path, cfg: FitConfig, echo: Echo = print) -> dict:
    """Run the whole fit; return the manifest of the bundle written to ``out``."""
    started, out = time.monotonic(), Path(out)
    _set_numerics(cfg)
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
    work = _prepare_output(out)
    try:
        bundle_io.save_folds(work, images.ids, folds, groups)
        served = len(cfg.tta.view_list(cfg.image_size))
        oof_views = np.zeros((len(cfg.models), served, len(labels), len(classes)), np.float32)
        views = cfg.tta.view_list(cfg.image_size, max(cfg.tta.views, cfg.tta_diagnostic_views))
        diag = diagnostic_rows(np.concatenate([s.oof for s in splits]), cfg.seed)
        diag_views = np.zeros((len(cfg.models), len(views), len(diag), len(classes)), np.float32)
        base_entries, validation = [], {}
        names = [base_name(model) for model in cfg.models]
        data = (pixels, labels, len(classes))
        for m, (model, name) in enumerate(zip(cfg.models, names)):
            files, histories = [], []
            for k, split in enumerate(splits):
                fold = None if cfg.protocol == "holdout" else k
                path = bundle_io.base_model_path(work, name, fold)
                desc = name if fold is None else f"{name} fold {k}"
                trained, history = _train(model, cfg.seed + 1000 * m + k, split, path, data, cfg, desc)
                per_view = TTAForward([[trained]], cfg.image_size)(pixels[split.oof], views)[0]
                oof_views[m][:, split.oof] = per_view[:served]
                kept = np.isin(split.oof, diag)
                diag_views[m][:, np.searchsorted(diag, split.oof[kept])] = per_view[:, kept]
                files.append(path.relative_to(work).as_posix())
                histories.append(history)
                merged = served_result(per_view[None, :served], cfg.tta).merged[0]
                echo(_summary_line(desc, history, score(merged, labels[split.oof])["accuracy"]))
            if refit:
                for file in files:
                    (work / file).unlink()
                path = bundle_io.base_model_path(work, name, None)
                split = refit_split(labels, cfg.validation_fraction, cfg.seed, groups)
                _, history = _train(model, cfg.seed + 1000 * m + len(splits), split, path, data, cfg, f"{name} refit")
                echo(_summary_line(f"{name} refit on all images", history, None))
                files, histories = [path.relative_to(work).as_posix()], [*histories, {**history, "refit": True}]
            bundle_io.write_json(bundle_io.history_path(work, name), {"model": name, "folds": histories})
            validation[name] = [h["best"] for h in histories]
            base_entries.append(_base_entry(work, model, files, cfg))

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
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest
