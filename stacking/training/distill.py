"""``stacking distill``: one network trained on the stack's soft targets, stored as one more way to answer.

The student is taught only with answers on images no base model trained on: the stack's
cross-validated answers on the OOF rows (every training image with ``kfold``; only the
held-out part with ``holdout``), and optionally images of ``--unlabelled DIR`` labelled by
the served stack (pseudo-labels, as Kaggle practice does). An answer the base models gave
on their own training images would teach the student their memory, not the stack's skill.

A quarter of the OOF rows is held out from the student: its best epoch is picked on them
(true labels) and it is scored there beside the stack and the best base model, on those
same rows. It is trained as base models are (augmentation, best-epoch checkpoint,
patience), exported and checked like them, and served on the identity view alone.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from stacking import bundle as bundle_io
from stacking.bundle import Trust
from stacking.bundle.manifest import Manifest, RuntimeEntry, StudentEntry
from stacking.choices import Protocol
from stacking.data.cache import CachedRows, PixelCache
from stacking.data.datasets import ImageSet, list_images, load_pixels, read_training_set
from stacking.errors import UserError
from stacking.inference.options import STACK
from stacking.meta.learners import score
from stacking.training.costing import TIMING_IMAGES, median_seconds, with_student

Echo = Callable[[str], None]
HELD_OUT = 0.25  # of the OOF rows: picks the student's best epoch and scores it


def _train_config(config: dict, epochs: int | None):
    from models.training import Augmentation, TrainConfig

    train = dict(config["train"])
    train["augmentation"] = Augmentation(**train["augmentation"])
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs {epochs}: must be at least 1")
        train["epochs"] = epochs
    return TrainConfig(**train)


def _student_size(student: str, default: int) -> tuple[str, int]:
    """``--student ARCH[@SIZE]`` as (architecture, size); the size defaults to the fit's default size."""
    architecture, at, size = student.partition("@")
    if at and not size.isdigit():
        raise UserError(f"--student {student}: expected ARCH or ARCH@SIZE with SIZE a whole number of pixels")
    return architecture, int(size) if at else default


def _check_student(student: str, image_size: int) -> None:
    from models.registry import get_spec, is_custom

    if is_custom(student):
        raise UserError(
            f"--student {student}: a registered architecture, not your own module (a student is "
            "served without --trust-custom-code)"
        )
    try:
        spec = get_spec(student)
    except KeyError as exc:
        raise UserError(f"--student: {exc.args[0]}") from None
    if image_size < spec.min_image_size:
        raise UserError(f"--student {student}@{image_size}: needs images of at least {spec.min_image_size} px")


def oof_pixels(
    manifest: Manifest, ids: np.ndarray, data: Path | None, size: int, cache: PixelCache, echo: Echo
) -> CachedRows:
    """The training images behind the OOF rows, in their order, from the fit's data folder (or ``data``), through the
    pixel cache."""
    source = Path(data) if data is not None else Path(manifest.data.source)
    where = "--data" if data is not None else "the fit's data folder (manifest data.source; or give --data)"
    try:
        images = read_training_set(source)
    except UserError as exc:
        raise UserError(f"{where} {source}: {exc}") from None
    position = {name: i for i, name in enumerate(images.ids)}
    missing = [str(i) for i in ids if str(i) not in position]
    if missing:
        raise UserError(
            f"{where} {source}: {len(missing)} of the bundle's OOF images are not there (first: "
            f"{missing[0]}); it must be the data the bundle was fitted on"
        )
    _, pixels, _ = load_pixels(images.subset([position[str(i)] for i in ids]), [size], cache=cache, echo=echo)
    return pixels.at(size)


def _pseudo_labels(
    bundle: Path, folder: Path, size: int, trust: Trust, cache: PixelCache, echo: Echo
) -> tuple[list[str], CachedRows, np.ndarray]:
    """Every readable image of ``folder`` at the student's ``size``, with the served stack's answer on it (unreadable
    ones reported, skipped)."""
    from stacking.inference.predictor import Predictor

    paths = list_images(folder)
    if not paths:
        raise UserError(f"--unlabelled {folder}: no images")
    predictor = Predictor(bundle, trust=trust)
    kept, pixels, bad = load_pixels(
        ImageSet(paths, predictor.classes), sorted({*predictor.sizes, size}), "skip", cache, echo
    )
    for _, reason in bad:
        echo(f"skipped {reason}")
    if not kept.paths:
        raise UserError(f"--unlabelled {folder}: none of its {len(paths)} images could be read")
    answers = predictor.predict(pixels, serve_as=STACK).probabilities
    return [f"unlabelled/{p.name}" for p in kept.paths], pixels.at(size), answers


def _split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    taught, held = train_test_split(rows, test_size=HELD_OUT, random_state=seed, stratify=stratify)
    return np.sort(taught), np.sort(held)


def _export(trained, pixels: CachedRows, image_size: int, echo: Echo) -> tuple[bytes | None, RuntimeEntry]:
    """The student's LiteRT file if it converts and agrees with Keras on the held-out rows, and its record."""
    from stacking.inference.tta import View
    from stacking.runtime import EXPORTED, TF, export_litert
    from stacking.training.export import Parity, choose, exported_answers, keras_answers, time_runtimes

    try:
        content = export_litert(trained)
    except Exception as exc:  # noqa: BLE001  the converter raises many types; any means "not exportable"
        echo(f"student: not exported to {EXPORTED} ({type(exc).__name__}); served by TensorFlow")
        return None, RuntimeEntry(name=EXPORTED, files=[], served=TF, parity=None, timing=None, refused=str(exc))
    parity = Parity.of(
        keras_answers(trained, pixels, [View()], image_size), exported_answers(content, pixels, [View()], image_size)
    )
    problem = parity.problem()
    if problem is not None:
        echo(f"student: {EXPORTED} export refused ({problem}); served by TensorFlow")
        return None, RuntimeEntry(
            name=EXPORTED, files=[], served=TF, parity=parity.as_dict(), timing=None, refused=problem
        )
    timing = time_runtimes([trained], [content], image_size, 1)
    runtime, _ = choose("auto", timing, False)
    return content, RuntimeEntry(
        name=EXPORTED, files=[], served=runtime, parity=parity.as_dict(), timing=timing, refused=None
    )


def _served_answers(
    trained, content: bytes | None, runtime: RuntimeEntry, pixels: CachedRows, image_size: int
) -> tuple[np.ndarray, float]:
    """The student's answers on ``pixels`` as it will serve (its runner, one view), and its ms per image."""
    from stacking.data.images import Pixels
    from stacking.inference.tta import TTAForward, ViewSet
    from stacking.runtime import TF, KerasRunner, LiteRTRunner

    runner = KerasRunner([trained]) if runtime.served == TF or content is None else LiteRTRunner([content])
    forward, views = TTAForward([runner], [image_size]), ViewSet.identity([image_size])
    timed = Pixels({image_size: pixels[:TIMING_IMAGES]}).loaded()
    ms = median_seconds(lambda: forward.folds(timed, views)) * 1000 / len(timed)
    return forward.folds(Pixels({image_size: pixels}), views)[0, 0, 0], ms


def _targets(
    bundle: Path,
    manifest: Manifest,
    pixels: CachedRows,
    size: int,
    taught: np.ndarray,
    unlabelled: Path | None,
    trust: Trust,
    cache: PixelCache,
    echo: Echo,
) -> tuple[CachedRows, np.ndarray, dict[str, np.ndarray]]:
    """The images the student learns from, their soft targets, and the record of both (ids and sources)."""
    oof, stack = bundle_io.load_oof(bundle), bundle_io.load_meta_oof(bundle)["chosen"]
    x, y = pixels[taught], stack[taught]  # the stack's answers from meta-folds that left each row out
    ids, sources = [str(i) for i in oof["ids"][taught]], ["oof"] * len(taught)
    if manifest.protocol.name == Protocol.HOLDOUT:
        echo(
            f"holdout bundle: only its {len(oof['labels'])} held-out images have answers the base models did not "
            f"train on; the student learns from {len(taught)} of them"
            + ("" if unlabelled else " (add --unlabelled DIR to teach it on more images, labelled by the stack)")
        )
    if unlabelled is not None:
        extra_ids, extra_pixels, extra = _pseudo_labels(bundle, Path(unlabelled), size, trust, cache, echo)
        x, y = CachedRows.concat([x, extra_pixels]), np.concatenate([y, extra])
        ids, sources = ids + extra_ids, sources + ["unlabelled"] * len(extra_ids)
        echo(f"{len(extra_ids)} unlabelled images labelled by the stack added to the student's targets")
    y = y.astype(np.float32)
    return x, y, {"ids": np.array(ids), "probabilities": y, "source": np.array(sources)}


def _scores(bundle: Path, manifest: Manifest, held: np.ndarray, answers: np.ndarray) -> dict:
    """The student, the stack and the best base model (by OOF accuracy) on the same held-out OOF rows."""
    oof, stack = bundle_io.load_oof(bundle), bundle_io.load_meta_oof(bundle)["chosen"]
    labels, names = oof["labels"][held], [str(n) for n in oof["models"]]
    m = max(
        range(len(names)),
        key=lambda k: (manifest.metrics.oof[names[k]].accuracy, -manifest.metrics.oof[names[k]].log_loss),
    )
    return {
        "rows": len(held),
        "scored_on": f"{len(held)} held-out OOF rows (the student never trained on them)",
        "student": score(answers, labels),
        "stack": score(stack[held], labels),
        "best_base": {"name": names[m], **score(oof["probabilities"][m][held], labels)},
    }


def distill(
    bundle: Path,
    student: str,
    unlabelled: Path | None = None,
    epochs: int | None = None,
    data: Path | None = None,
    trust: Trust = Trust(),
    echo: Echo = print,
    cache: PixelCache | None = None,
) -> Manifest:
    """Train ``student`` (ARCH or ARCH@SIZE) on the stack's honest soft targets; store it in ``bundle``; return the
    new manifest. Images are read through the pixel cache (``cache``, default the user's)."""
    import keras

    from models.registry import create_model
    from models.training import train_model
    from stacking.reporting.report import write_report

    bundle = Path(bundle)
    manifest = bundle_io.load_manifest(bundle, trust)
    if manifest.serving is None:
        raise UserError(
            f"{bundle}: fitted before serving options existed (no costs, no per-view OOF answers); "
            "refit it with this version first"
        )
    student, size = _student_size(student, manifest.image_size)
    _check_student(student, size)
    train_cfg = _train_config(manifest.config, epochs)
    if unlabelled is not None and not Path(unlabelled).is_dir():
        raise UserError(f"--unlabelled {unlabelled}: no such folder")
    signed = (bundle / bundle_io.SIGNATURE).is_file()
    config, seed = manifest.config, int(manifest.config["seed"]) + 7919  # apart from every base model's seed
    oof = bundle_io.load_oof(bundle)
    labels, n_classes = oof["labels"], len(manifest.classes)
    cache = cache or PixelCache()
    pixels = oof_pixels(manifest, oof["ids"], data, size, cache, echo)
    taught, held = _split(labels, seed)
    x, y, targets = _targets(bundle, manifest, pixels, size, taught, unlabelled, trust, cache, echo)
    keras.utils.set_random_seed(seed)
    model = create_model(student, n_classes, size, weights=None, head=config["head"], dropout=config["dropout"])
    with tempfile.TemporaryDirectory(prefix="stackserve-student-") as tmp:
        checkpoint = Path(tmp) / "student.keras"
        truth = np.eye(n_classes, dtype=np.float32)[labels[held]]  # the best epoch is picked on true labels
        trained, history = train_model(model, (x, y), (pixels[held], truth), train_cfg, checkpoint, seed=seed)
        content, runtime = _export(trained, pixels[held], size, echo)
        answers, ms = _served_answers(trained, content, runtime, pixels[held], size)
        keras_file, exported_file = bundle_io.save_student(bundle, checkpoint, content, targets)
    scores = _scores(bundle, manifest, held, answers)
    entry = StudentEntry(
        architecture=student,
        image_size=size,
        files=[keras_file],
        runtime=runtime.model_copy(update={"files": [exported_file] if exported_file else []}),
        history=bundle_io.save_history(bundle, "student", [history]),
        targets={
            "oof_rows": len(taught),
            "unlabelled": len(y) - len(taught),
            "source": "the stack's cross-validated answers on OOF rows"
            + (f", and its answers on {unlabelled}" if unlabelled else ""),
            "file": f"{bundle_io.STUDENT_FOLDER}/targets.npz",
        },
        scores=scores,
        ms_per_image=round(ms, 4),
    )
    manifest = bundle_io.write_manifest(
        bundle, manifest.model_copy(update={"serving": with_student(manifest.serving, entry)})
    )
    write_report(bundle, manifest)
    best = scores["best_base"]
    echo(
        f"student {student} at {size} px: accuracy {scores['student']['accuracy']:.4f} on {len(held)} held-out OOF "
        "rows "
        f"(stack {scores['stack']['accuracy']:.4f}, best base model {best['name']} {best['accuracy']:.4f}), "
        f"{ms:.3g} ms per image on one view, best epoch {history['best_epoch'] + 1}/{len(history['loss'])}"
    )
    if signed:
        echo(f"{bundle} changed, so its signature was removed: sign it again with stacking sign {bundle} --key KEY")
    return manifest
