"""``stacking distill``: one network trained on the stack's soft targets, stored as one more way to answer.

The student is taught only with answers on images no base model trained on: the OOF rows
(every training image with ``kfold``; only the held-out part with ``holdout``), and optionally
images of ``--unlabelled DIR`` (pseudo-labels, as Kaggle practice does). An answer the base
models gave on their own training images would teach the student their memory, not the
stack's skill.

``--teaching consistent`` (the default, ``stacking.training.teaching``): the stack answers each
augmented, blended picture the student trains on, from fold models that never saw the images
in it. ``--teaching fixed``: the stack's cross-validated answer on each plain image, while the
student trains on augmented ones (kept for comparison).

A quarter of the OOF rows is held out from the student: its best epoch is picked on them
(true labels, by log-loss under consistent teaching) and it is scored there beside the stack
and the best base model, on those same rows. It is exported and checked like a base model and
served on the identity view alone.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter
from sklearn.model_selection import train_test_split

from stacking import bundle as bundle_io
from stacking.bundle import Trust
from stacking.bundle.manifest import Manifest, RuntimeEntry, StudentEntry, StudentTeaching
from stacking.choices import TEACHING, Protocol, TeachingMethod, Weights
from stacking.data.cache import CachedRows, PixelCache
from stacking.data.datasets import ImageSet, list_images, load_pixels, read_training_set
from stacking.data.images import Pixels
from stacking.errors import UserError
from stacking.inference.options import STACK
from stacking.meta.learners import score
from stacking.training.config import ModelConfig, load_config, parse_spec
from stacking.training.costing import TIMING_IMAGES, median_seconds, with_student
from stacking.training.teaching import SERVED, Teacher, build_pool, draw_plan

Echo = Callable[[str], None]
HELD_OUT = 0.25  # of the OOF rows: picks the student's best epoch and scores it


@dataclass(frozen=True)
class Teaching:
    """How the student is taught: ``stacking distill``'s --teaching, --copies, --mixup and --temperature."""

    method: str = TeachingMethod.CONSISTENT
    copies: int = 8  # pictures per taught image in the pool the stack answers
    mixup: float = 1.0  # a blend's share of its own image from Beta(a, a) (1: uniform, as Beyer et al.); 0: none
    temperature: float = 1.0  # targets and the student's answers softened alike in the loss (1: plain)

    def __post_init__(self) -> None:
        TEACHING.check(self.method)
        if self.copies < 1:
            raise UserError(f"--copies {self.copies}: must be at least 1")
        if self.mixup < 0:
            raise UserError(f"--mixup {self.mixup}: must be 0 (no blending) or more")
        if self.temperature <= 0:
            raise UserError(f"--temperature {self.temperature}: must be above 0")


def student_member(student: str, manifest: Manifest, epochs: int | None) -> ModelConfig:
    """``--student``: ARCH or ARCH@SIZE (from scratch, the fit's recipe and default size), a base model's name (its
    architecture, size, weights and recipe), or a TOML file with one ``[[model]]`` table."""
    from models.registry import get_spec, is_custom

    names = [b.name for b in manifest.base_models]
    if student.endswith(".toml"):
        if not Path(student).is_file():
            raise UserError(f"--student {student}: no such file")
        models = load_config(Path(student), {}).models
        if len(models) != 1:
            raise UserError(f"--student {student}: expected one [[model]] table, found {len(models)}")
        member = models[0]
    elif student in names:
        member = TypeAdapter(ModelConfig).validate_python(manifest.config["models"][names.index(student)])
    else:
        config = manifest.config
        table = {"image_size": config["image_size"], **parse_spec(student, "--student")}
        table.update(name=table["architecture"], weights=Weights.NONE, train=config["train"])
        table.update(head=config["head"], dropout=config["dropout"])
        member = TypeAdapter(ModelConfig).validate_python(table)
    if is_custom(member.architecture):
        raise UserError(
            f"--student {member.architecture}: a registered architecture, not your own module (a student is "
            "served without --trust-custom-code)"
        )
    try:
        spec = get_spec(member.architecture)
    except KeyError as exc:
        raise UserError(f"--student: {exc.args[0]}") from None
    if member.image_size < spec.min_image_size:
        raise UserError(
            f"--student {member.architecture}@{member.image_size}: needs images of at least {spec.min_image_size} px"
        )
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs {epochs}: must be at least 1")
        member = replace(member, train=replace(member.train, epochs=epochs))
    return member


def oof_pixels(
    manifest: Manifest, ids: np.ndarray, data: Path | None, sizes: list[int], cache: PixelCache, echo: Echo
) -> Pixels:
    """The training images behind the OOF rows, in their order, at ``sizes``, from the fit's data folder (or
    ``data``), through the pixel cache."""
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
    _, pixels, _ = load_pixels(images.subset([position[str(i)] for i in ids]), sizes, cache=cache, echo=echo)
    return pixels


def _unlabelled(folder: Path, classes: list[str], sizes: list[int], cache: PixelCache, echo: Echo):
    """Every readable image of ``folder`` at ``sizes`` (unreadable ones reported, skipped): their ids and pixels."""
    paths = list_images(folder)
    if not paths:
        raise UserError(f"--unlabelled {folder}: no images")
    kept, pixels, bad = load_pixels(ImageSet(paths, classes), sizes, "skip", cache, echo)
    for _, reason in bad:
        echo(f"skipped {reason}")
    if not kept.paths:
        raise UserError(f"--unlabelled {folder}: none of its {len(paths)} images could be read")
    return [f"unlabelled/{p.name}" for p in kept.paths], pixels


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


@dataclass
class Lesson:
    """What the student learns from: its examples at its size, their targets, the record kept in the bundle, and
    what answering them cost."""

    x: CachedRows | np.ndarray
    y: np.ndarray
    record: dict[str, np.ndarray]
    copies: int
    teacher_passes: int
    teacher_seconds: float


def _fixed_lesson(bundle: Path, pixels: CachedRows, taught: np.ndarray, extra: tuple | None, trust: Trust) -> Lesson:
    """The stack's cross-validated answer on each plain OOF image, read from the bundle, and the served stack's on
    each unlabelled one (the only teacher passes this way spends)."""
    from stacking.inference.predictor import Predictor

    oof, stack = bundle_io.load_oof(bundle), bundle_io.load_meta_oof(bundle)["chosen"]
    x, y = pixels[taught], stack[taught]  # the stack's answers from meta-folds that left each row out
    ids, sources = [str(i) for i in oof["ids"][taught]], ["oof"] * len(taught)
    passes, seconds = 0, 0.0
    if extra is not None:
        extra_ids, extra_pixels = extra
        started = time.perf_counter()
        answered = Predictor(bundle, trust=trust).predict(extra_pixels, serve_as=STACK)
        passes, seconds = int(answered.cost_views.sum()), time.perf_counter() - started
        x, y = CachedRows.concat([x, extra_pixels.at(pixels.size)]), np.concatenate([y, answered.probabilities])
        ids, sources = ids + extra_ids, sources + ["unlabelled"] * len(extra_ids)
    y = y.astype(np.float32)
    record = {"ids": np.array(ids), "probabilities": y, "source": np.array(sources)}
    return Lesson(x, y, record, 1, passes, seconds)


def _consistent_lesson(
    bundle: Path,
    manifest: Manifest,
    member: ModelConfig,
    pixels: Pixels,
    taught: np.ndarray,
    extra: tuple | None,
    teaching: Teaching,
    trust: Trust,
    seed: int,
    folder: Path,
    echo: Echo,
) -> Lesson:
    """A pool of pictures of the taught rows (and unlabelled images), each answered by the stack from models that
    never trained on an image in it (``stacking.training.teaching``)."""
    oof = bundle_io.load_oof(bundle)
    kfold = manifest.protocol.name == Protocol.KFOLD
    groups = oof["folds"][taught].astype(int) if kfold else np.zeros(len(taught), int)
    ids, sources = [str(i) for i in oof["ids"][taught]], ["oof"] * len(taught)
    images = pixels[taught]
    if extra is not None:
        extra_ids, extra_pixels = extra
        images = Pixels({s: CachedRows.concat([images.at(s), extra_pixels.at(s)]) for s in images.sizes})
        groups = np.concatenate([groups, np.full(len(extra_ids), SERVED)])
        ids, sources = ids + extra_ids, sources + ["unlabelled"] * len(extra_ids)
    aug = member.train.augmentation
    plan = draw_plan(groups, teaching.copies, aug.flip, aug.shift, aug.zoom, teaching.mixup, seed)
    pool = build_pool(Teacher(bundle, manifest, trust), images, groups, plan, member.image_size, folder, echo)
    ids, sources = np.array(ids), np.array(sources)
    record = {
        "ids": ids[plan.rows],
        "partners": ids[plan.partners],
        "share": plan.share,
        "probabilities": pool.targets,
        "source": sources[plan.rows],
    }
    return Lesson(pool.pixels, pool.targets, record, teaching.copies, pool.teacher_passes, pool.seconds)


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
    teaching: Teaching = Teaching(),
) -> Manifest:
    """Train ``student`` (``--student``: see :func:`student_member`) on the stack's honest soft targets, taught as
    ``teaching`` says; store it in ``bundle``; return the new manifest. Images are read through the pixel cache
    (``cache``, default the user's)."""
    import keras

    from models.registry import create_model, get_spec
    from models.training import Augmentation, train_model
    from stacking.reporting.report import write_report
    from stacking.training.jobs import set_numerics

    bundle = Path(bundle)
    manifest = bundle_io.load_manifest(bundle, trust)
    if manifest.serving is None:
        raise UserError(
            f"{bundle}: fitted before serving options existed (no costs, no per-view OOF answers); "
            "refit it with this version first"
        )
    member = student_member(student, manifest, epochs)
    size, consistent = member.image_size, teaching.method == TeachingMethod.CONSISTENT
    if unlabelled is not None and not Path(unlabelled).is_dir():
        raise UserError(f"--unlabelled {unlabelled}: no such folder")
    signed = (bundle / bundle_io.SIGNATURE).is_file()
    seed = int(manifest.config["seed"]) + 7919  # apart from every base model's seed
    oof = bundle_io.load_oof(bundle)
    labels, n_classes = oof["labels"], len(manifest.classes)
    cache = cache or PixelCache()
    # The stack answers at every base model's size: consistent teaching's pictures of the OOF rows, and unlabelled
    # images either way; a fixed answer on an OOF row is read from the bundle, so only the student's size is needed.
    every = sorted({size, *(b.image_size for b in manifest.base_models)})
    pixels = oof_pixels(manifest, oof["ids"], data, every if consistent else [size], cache, echo)
    taught, held = _split(labels, seed)
    if manifest.protocol.name == Protocol.HOLDOUT:
        echo(
            f"holdout bundle: only its {len(labels)} held-out images have answers the base models did not "
            f"train on; the student learns from {len(taught)} of them"
            + ("" if unlabelled else " (add --unlabelled DIR to teach it on more images, labelled by the stack)")
        )
    extra = None if unlabelled is None else _unlabelled(Path(unlabelled), manifest.classes, every, cache, echo)
    train_cfg = member.train
    with tempfile.TemporaryDirectory(prefix="stackserve-student-") as tmp:
        if consistent:
            lesson = _consistent_lesson(
                bundle, manifest, member, pixels, taught, extra, teaching, trust, seed, Path(tmp), echo
            )
            # The pictures are the augmentation: the student sees each as the stack answered it.
            train_cfg = replace(train_cfg, augmentation=Augmentation(flip=False, shift=0.0, zoom=0.0))
        else:
            lesson = _fixed_lesson(bundle, pixels.at(size), taught, extra, trust)
        if extra is not None:
            echo(f"{len(extra[0])} unlabelled images labelled by the stack added to the student's targets")
        # As the fit trains: deterministic ops unless the fit turned them off, so one bundle and seed give one student.
        set_numerics(bool(manifest.config.get("deterministic", True)), bool(manifest.config.get("mixed_precision")))
        keras.utils.set_random_seed(seed)
        model = create_model(
            member.architecture, n_classes, size, weights=member.start, head=member.head, dropout=member.dropout
        )
        checkpoint = Path(tmp) / "student.keras"
        truth = np.eye(n_classes, dtype=np.float32)[labels[held]]  # the best epoch is picked on true labels
        held_pixels = pixels.at(size)[held]
        started = time.perf_counter()
        trained, history = train_model(
            model,
            (lesson.x, lesson.y),
            (held_pixels, truth),
            train_cfg,
            checkpoint,
            seed=seed,
            fine_tune=get_spec(member.architecture).block_pattern if member.start else None,
            monitor="val_log_loss" if consistent else "val_accuracy",
            temperature=teaching.temperature,
        )
        student_seconds = time.perf_counter() - started
        content, runtime = _export(trained, held_pixels, size, echo)
        answers, ms = _served_answers(trained, content, runtime, held_pixels, size)
        keras_file, exported_file = bundle_io.save_student(bundle, checkpoint, content, lesson.record)
    scores = _scores(bundle, manifest, held, answers)
    record = StudentTeaching(
        method=teaching.method,
        copies=lesson.copies,
        mixup=teaching.mixup if consistent else 0.0,
        temperature=teaching.temperature,
        pictures=len(lesson.y),
        teacher_passes=lesson.teacher_passes,
        teacher_seconds=round(lesson.teacher_seconds, 2),
        student_seconds=round(student_seconds, 2),
    )
    entry = StudentEntry(
        architecture=member.architecture,
        image_size=size,
        files=[keras_file],
        runtime=runtime.model_copy(update={"files": [exported_file] if exported_file else []}),
        history=bundle_io.save_history(bundle, "student", [history]),
        targets={
            "oof_rows": len(taught),
            "unlabelled": 0 if extra is None else len(extra[0]),
            "source": (
                f"the stack's answers on {teaching.copies} augmented, blended pictures of each image, from models "
                "that never trained on them"
                if consistent
                else "the stack's cross-validated answers on OOF rows"
            )
            + (f", and on {unlabelled}" if unlabelled else ""),
            "file": f"{bundle_io.STUDENT_FOLDER}/targets.npz",
        },
        scores=scores,
        ms_per_image=round(ms, 4),
        teaching=record,
    )
    manifest = bundle_io.write_manifest(
        bundle, manifest.model_copy(update={"serving": with_student(manifest.serving, entry)})
    )
    write_report(bundle, manifest)
    best = scores["best_base"]
    echo(
        f"student {member.architecture} at {size} px: accuracy {scores['student']['accuracy']:.4f} on {len(held)} "
        f"held-out OOF rows (stack {scores['stack']['accuracy']:.4f}, best base model {best['name']} "
        f"{best['accuracy']:.4f}), {ms:.3g} ms per image on one view, best epoch {history['best_epoch'] + 1}/"
        f"{len(history['loss'])}; teaching {record.teacher_passes} teacher passes in {record.teacher_seconds:g} s, "
        f"the student's training {record.student_seconds:g} s"
    )
    if signed:
        echo(f"{bundle} changed, so its signature was removed: sign it again with stacking sign {bundle} --key KEY")
    return manifest
