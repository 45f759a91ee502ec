"""Training of one base model, as an experienced practitioner would do it.

- Augmentation (Keras preprocessing layers) on training batches only.
- A pretrained backbone is fine-tuned in phases (``fine_tune_schedule``): by default
  first the head alone on the frozen backbone; then the top N whole blocks unfrozen,
  every BatchNormalization layer kept frozen (and so in inference mode), at a lower
  learning rate, optionally smaller still for the backbone than for the head
  (``DiscriminativeAdam``). ``gradual`` unfreezes one more block per phase; ``full``
  trains every layer from the start. ``stacking study finetune`` measures them.
- Every BatchNormalization layer forgets its initial moving statistics within one epoch,
  but averages over at least the last ten or so batches (``match_batchnorm_momentum``):
  keras.applications builders use momentum 0.99 or 0.999, which after a few hundred steps
  leaves the inference-mode network (the one validated, checkpointed and served) far from
  the trained one, at chance accuracy.
- One ``ModelCheckpoint`` across both phases keeps the best epoch by validation
  accuracy; ``ReduceLROnPlateau`` acts before ``EarlyStopping`` gives up.

The file at ``checkpoint_path`` is always the best epoch's model, and the returned
model is that file reloaded, so whatever predicts next is exactly what was saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from pydantic import Field
from pydantic.dataclasses import dataclass

from models.choices import STRICT, BatchNormMomentum, ClassWeight, FineTuneSchedule
from models.registry import BACKBONE, BN_MOMENTUM, block_ids


@dataclass(frozen=True, config=STRICT)
class Augmentation:
    """Training-time augmentation by name and strength; TTA views should stay within it."""

    flip: bool = True
    """Horizontal flips: off for data where mirroring changes the class (digits, text)."""
    shift: float = Field(0.1, ge=0, lt=1)
    """Translation, as a fraction of the image side."""
    rotate: float = Field(0.0, ge=0, le=0.5)
    """Rotation, as a fraction of a full turn (0.05 = up to 18 degrees)."""
    zoom: float = Field(0.1, ge=0, lt=1)
    """Zoom in or out by up to this fraction."""
    contrast: float = Field(0.0, ge=0, le=1)
    """Contrast changed by up to this fraction."""


@dataclass(frozen=True, config=STRICT)
class TrainConfig:
    """Optimisation settings shared by every base model of a fit."""

    epochs: int = Field(30, ge=1)
    """All epochs, both phases together."""
    batch_size: int = Field(32, ge=1)
    """Images per training step."""
    learning_rate: float = Field(1e-3, gt=0)
    """From scratch, or phase 1 (head on a frozen backbone)."""
    early_stopping_patience: int = Field(6, ge=1)
    """Epochs without a better validation score before training stops (the best epoch's weights are kept)."""
    reduce_lr_patience: int = Field(3, ge=0)
    """Epochs without a better validation score before the learning rate drops; below the early-stopping
    patience, so it drops before training stops."""
    reduce_lr_factor: float = Field(0.3, gt=0, lt=1)
    """The learning rate is multiplied by this when it drops."""
    head_epochs: int = Field(5, ge=0)
    """Phase 1 of fine-tuning a pretrained backbone."""
    fine_tune_blocks: int = Field(2, ge=0)
    """Phase 2 unfreezes this many top blocks of the backbone (0: head only)."""
    fine_tune_learning_rate: float = Field(1e-4, gt=0)
    """Phase 2's learning rate (the head's, and the backbone's unless backbone_lr_factor says otherwise)."""
    backbone_lr_factor: float = Field(1.0, gt=0)
    """Phase 2 backbone rate = this x the head's (e.g. 0.1); 1: one rate."""
    fine_tune_schedule: FineTuneSchedule = FineTuneSchedule.PHASED
    """Phased: head, then the top fine_tune_blocks blocks; gradual: head, then one more block per phase up to
    fine_tune_blocks (the epochs after the head's shared between them); full: every layer from the first epoch."""
    freeze_batchnorm: bool = True
    """Unfrozen blocks keep BatchNorm frozen (inference mode, pretrained statistics)."""
    batchnorm_momentum: BatchNormMomentum = BatchNormMomentum.MATCHED
    """Matched: momentum lowered so moving statistics forget their start within an epoch; builder: keep Keras'
    0.99/0.999 (the trap: a short schedule from scratch validates at chance)."""
    class_weight: ClassWeight = ClassWeight.NONE
    """None, or "balanced": each class weighed by n / (classes x its count)."""
    jit_compile: bool = False
    """XLA, for GPU users; off on CPU."""
    augmentation: Augmentation = Augmentation()
    """[augmentation] in the file."""

    def __post_init__(self) -> None:
        if self.reduce_lr_patience >= self.early_stopping_patience:
            raise ValueError(
                f"reduce_lr_patience {self.reduce_lr_patience}: must be below early_stopping_patience "
                f"{self.early_stopping_patience}, or training stops before the learning rate ever drops"
            )

    def as_dict(self) -> dict:
        return asdict(self)


@keras.saving.register_keras_serializable(package="stackserve")
class DiscriminativeAdam(keras.optimizers.Adam):
    """Adam with a step size ``backbone_factor`` times smaller for the backbone than for the head.

    Scaling the backbone's gradients instead would do nothing: Adam divides each
    gradient by its own running magnitude. So the learning rate itself is scaled,
    per variable. Head variables are those of layers named ``head_*``.
    """

    def __init__(self, backbone_factor: float = 0.1, head_prefix: str = "head_", **kwargs):
        super().__init__(**kwargs)
        self.backbone_factor = backbone_factor
        self.head_prefix = head_prefix

    def build(self, variables):
        super().build(variables)
        self._backbone = {i for i, v in enumerate(variables) if not v.path.startswith(self.head_prefix)}

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in self._backbone:
            learning_rate = learning_rate * self.backbone_factor
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone_factor": self.backbone_factor, "head_prefix": self.head_prefix}


@keras.saving.register_keras_serializable(package="stackserve")
class TemperedCrossEntropy(keras.losses.Loss):
    """Cross-entropy between the target and the model's probabilities, both softened at ``temperature`` (Hinton et
    al. 2015), times the temperature squared so gradients keep their scale. The model ends in a softmax: the
    log of its probabilities is its logits up to a constant, which the softmax at the temperature ignores."""

    def __init__(self, temperature: float = 1.0, name: str = "tempered_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)

    def _soften(self, p):
        return keras.ops.softmax(keras.ops.log(keras.ops.clip(p, 1e-7, 1.0)) / self.temperature, axis=-1)

    def call(self, y_true, y_pred):
        crossed = keras.losses.categorical_crossentropy(self._soften(y_true), self._soften(y_pred))
        return self.temperature**2 * crossed

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


def make_augmenter(aug: Augmentation, seed: int) -> keras.Sequential:
    """The random augmentation applied to training batches only."""
    steps: list[keras.layers.Layer] = []
    if aug.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if aug.shift > 0:
        steps.append(keras.layers.RandomTranslation(aug.shift, aug.shift, fill_mode="nearest", seed=seed + 1))
    if aug.rotate > 0:
        steps.append(keras.layers.RandomRotation(aug.rotate, fill_mode="nearest", seed=seed + 2))
    if aug.zoom > 0:
        steps.append(keras.layers.RandomZoom(aug.zoom, fill_mode="nearest", seed=seed + 3))
    if aug.contrast > 0:
        steps.append(keras.layers.RandomContrast(aug.contrast, seed=seed + 4))
    return keras.Sequential(steps, name="augmentation")


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """Keras ``class_weight``: None, or n / (classes x count) per class for ``balanced``."""
    if mode == ClassWeight.NONE:
        return None
    if mode != ClassWeight.BALANCED:
        raise ValueError(f"class_weight {mode!r}: expected one of {', '.join(ClassWeight)}")
    counts = np.bincount(labels, minlength=n_classes)
    return {c: float(len(labels) / (n_classes * n)) for c, n in enumerate(counts) if n > 0}


def _batches(x, y: np.ndarray, batch_size: int, seed: int | None = None) -> tf.data.Dataset:
    """Batches of (uint8 images, targets), the images read from ``x`` by row numbers as each batch is needed.

    ``x``: an array, or an array-like whose ``np.asarray(x[rows])`` reads those rows (a disk cache), so memory holds
    batches, not the data set. ``seed``: shuffled each epoch. Shuffling row numbers orders the examples exactly as
    shuffling the examples themselves would (the permutation depends on the seed and the count alone).
    """
    shape = tuple(x.shape[1:])
    rows = tf.data.Dataset.from_tensor_slices((np.arange(len(x)), y))
    if seed is not None:
        rows = rows.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

    def read(index, targets):
        images = tf.numpy_function(lambda r: np.asarray(x[r], np.uint8), [index], tf.uint8, stateful=False)
        images.set_shape((None, *shape))
        return images, targets

    # Parallel reads, delivered in order: the order of examples (and so the weights) does not depend on timing.
    return rows.batch(batch_size).map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _training_dataset(x, y: np.ndarray, cfg: TrainConfig, seed: int) -> tf.data.Dataset:
    augment = make_augmenter(cfg.augmentation, seed)
    ds = _batches(x, y, cfg.batch_size, seed)
    # A sequential map: the augmentation layers' random state then advances in one
    # order, so a seeded fit is reproducible.
    if augment.layers:  # an empty Sequential cannot be built: no augmentation, no map
        ds = ds.map(lambda images, labels: (augment(tf.cast(images, "float32"), training=True), labels))
    return ds.prefetch(tf.data.AUTOTUNE)


def _validation_dataset(x, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    ds = _batches(x, y, batch_size).map(lambda images, labels: (tf.cast(images, "float32"), labels))
    return ds.prefetch(tf.data.AUTOTUNE)


def find_backbone(model: keras.Model) -> keras.Model | None:
    """The nested keras.applications backbone, if the model has one."""
    return next((layer for layer in model.layers if layer.name == BACKBONE), None)


def unfreeze_top_blocks(
    backbone: keras.Model, block_pattern: str, n: int | None, freeze_batchnorm: bool = True
) -> None:
    """Make the top ``n`` whole blocks trainable (None: every layer), BatchNormalization layers frozen unless
    ``freeze_batchnorm`` is False (a frozen one also runs in inference mode: its statistics stay)."""
    ids = block_ids(backbone, block_pattern)
    order = list(dict.fromkeys(b for b in ids if b is not None))
    if n is None or n >= len(order):
        start = 0
    else:
        boundary = order[len(order) - n - 1]  # the last block that stays frozen
        start = max(i for i, b in enumerate(ids) if b == boundary) + 1
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        frozen_bn = freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= start and not frozen_bn


# Share of the initial moving statistics a training BatchNormalization layer may still hold after one epoch.
BN_FORGET_WITHIN_EPOCH = 0.01


def batchnorm_momentum(steps_per_epoch: int) -> float:
    """The momentum whose moving statistics keep at most ``BN_FORGET_WITHIN_EPOCH`` of their start after one epoch,
    and never below the built-ins' 0.9: lower, on a short epoch, they would follow the last two or three batches
    alone (measured: a 0.63 momentum on 10-step epochs left a member 10 points worse in a stack on unseen images)."""
    return max(BN_MOMENTUM, BN_FORGET_WITHIN_EPOCH ** (1 / max(1, steps_per_epoch)))


def match_batchnorm_momentum(model: keras.Model, steps_per_epoch: int) -> int:
    """Lower the momentum of every BatchNormalization layer above :func:`batchnorm_momentum`; return how many.

    Frozen layers keep theirs too (they do not update), so a later phase that trains them
    finds the matched value. Saved with the model's config, so a reloaded model keeps it.
    """
    most, changed = batchnorm_momentum(steps_per_epoch), 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > most:
            layer.momentum = most
            changed += 1
    return changed


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer, nested models' layers included."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


MONITORS = {"val_accuracy": "max", "val_log_loss": "min"}  # what picks the best epoch and stops training


def _schedule(cfg: TrainConfig, monitor: str) -> list[keras.callbacks.Callback]:
    """Per-phase callbacks: the LR drops first, training stops later, best weights restored."""
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience, min_lr=1e-6
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=MONITORS[monitor], patience=cfg.early_stopping_patience, restore_best_weights=True
        ),
    ]


def _fine_tune(backbone: keras.Model, pattern: str, cfg: TrainConfig, run: Callable[..., dict]) -> list[dict]:
    """The phases of fine-tuning a pretrained backbone, as ``cfg.fine_tune_schedule`` says; each phase's history.

    ``run(optimizer, first_epoch, last_epoch, phase)`` trains one phase; a phase that stops
    early hands its remaining epochs to the next.
    """

    def rate() -> keras.optimizers.Optimizer:
        return DiscriminativeAdam(cfg.backbone_lr_factor, learning_rate=cfg.fine_tune_learning_rate)

    if cfg.fine_tune_schedule == FineTuneSchedule.FULL:
        unfreeze_top_blocks(backbone, pattern, None, cfg.freeze_batchnorm)
        return [run(rate(), 0, cfg.epochs, 1)]
    backbone.trainable = False
    phases = []  # head_epochs 0: straight to the unfrozen blocks
    if cfg.head_epochs > 0:
        phases.append(run(keras.optimizers.Adam(cfg.learning_rate), 0, min(cfg.head_epochs, cfg.epochs), 1))
    done = len(phases[0]["loss"]) if phases else 0
    if cfg.fine_tune_schedule == FineTuneSchedule.GRADUAL:
        steps = list(range(1, cfg.fine_tune_blocks + 1))  # one more block each phase
    else:
        steps = [cfg.fine_tune_blocks] if cfg.fine_tune_blocks > 0 else []
    for k, blocks in enumerate(steps):
        if done >= cfg.epochs:
            break
        last = done + -(-(cfg.epochs - done) // (len(steps) - k))  # the epochs left, shared by the phases left
        unfreeze_top_blocks(backbone, pattern, blocks, cfg.freeze_batchnorm)
        phases.append(run(rate(), done, last, len(phases) + 1))
        done += len(phases[-1]["loss"])
    if not phases:
        raise ValueError("nothing to train: head_epochs and fine_tune_blocks are both 0")
    return phases


def train_model(
    model: keras.Model,
    train: tuple,
    val: tuple,
    cfg: TrainConfig,
    checkpoint_path: Path,
    seed: int = 0,
    fine_tune: str | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    monitor: str = "val_accuracy",
    temperature: float = 1.0,
) -> tuple[keras.Model, dict]:
    """Fit ``model`` on raw-pixel ``train`` images, watching ``val``; return (best model, history).

    ``train`` and ``val``: (images, targets). Images: uint8 (N, H, W, 3), an array or an array-like read in batches
    (``_batches``). Targets are labels (N,), or (N, C) probabilities (soft targets: then ``val``'s are one-hot).

    ``fine_tune``: the block pattern of a pretrained backbone, to train in two phases;
    None trains every layer from the start. ``seed`` fixes shuffling and augmentation;
    seed Keras (``keras.utils.set_random_seed``) before building the model to fix its
    initial weights too. ``on_epoch_end(epoch, logs)`` is called after each epoch.
    ``monitor``: ``val_accuracy``, or ``val_log_loss`` (smoother on few validation rows) picks the best epoch and
    stops training. ``temperature``: soft targets are matched at this temperature (``TemperedCrossEntropy``).
    The history holds each metric per epoch, the learning rate and phase per epoch,
    and ``best_epoch`` (0-based) with that epoch's validation metrics.
    """
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    if monitor not in MONITORS:
        raise ValueError(f"monitor {monitor!r}: expected one of {', '.join(MONITORS)}")
    checkpoint = keras.callbacks.ModelCheckpoint(
        checkpoint_path, monitor=monitor, mode=MONITORS[monitor], save_best_only=True
    )  # one instance across both phases, so "best" spans them
    extra = [keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)] if on_epoch_end else []
    data, validation = _training_dataset(*train, cfg, seed), _validation_dataset(*val, cfg.batch_size)
    if cfg.batchnorm_momentum == BatchNormMomentum.MATCHED:
        match_batchnorm_momentum(model, -(-len(train[0]) // cfg.batch_size))
    soft = train[1].ndim == 2  # (N, C) soft targets (a distilled student) instead of (N,) labels
    weights = class_weights(train[1].argmax(axis=1) if soft else train[1], model.output_shape[-1], cfg.class_weight)
    if temperature != 1.0 and not soft:
        raise ValueError("temperature: only soft targets are matched at a temperature")
    loss = (
        (TemperedCrossEntropy(temperature) if temperature != 1.0 else "categorical_crossentropy")
        if soft
        else "sparse_categorical_crossentropy"
    )
    log_loss = keras.metrics.CategoricalCrossentropy if soft else keras.metrics.SparseCategoricalCrossentropy
    metrics = ["accuracy", *([log_loss(name="log_loss")] if monitor == "val_log_loss" else [])]

    def run(optimizer: keras.optimizers.Optimizer, first: int, last: int, phase: int) -> dict:
        model.compile(optimizer, loss, metrics=metrics, jit_compile=cfg.jit_compile)
        fitted = model.fit(
            data,
            validation_data=validation,
            initial_epoch=first,
            epochs=last,
            callbacks=[checkpoint, *_schedule(cfg, monitor), *extra],
            class_weight=weights,
            shuffle=False,
            verbose=0,
        )
        return {**fitted.history, "phase": [phase] * len(fitted.history["loss"])}

    backbone = find_backbone(model)
    if fine_tune and backbone is not None:
        phases = _fine_tune(backbone, fine_tune, cfg, run)
    else:
        phases = [run(keras.optimizers.Adam(cfg.learning_rate), 0, cfg.epochs, 1)]
    history = {k: [float(v) for p in phases for v in p[k]] for k in phases[0]}
    history["phase"] = [int(v) for v in history["phase"]]
    watched = np.array(history[monitor]) * (1 if MONITORS[monitor] == "max" else -1)
    best = int(np.argmax(watched))  # first best, as ModelCheckpoint keeps it
    history["best_epoch"] = best
    history["best"] = {k: v[best] for k, v in history.items() if isinstance(v, list) and k.startswith("val_")}
    return keras.models.load_model(checkpoint_path), history
