"""Training of one base model: augmentation, best-epoch checkpoint, LR schedule, early stop.

The file at ``checkpoint_path`` is always the best epoch's model (by validation
accuracy), and the returned model is that file reloaded, so whatever predicts next
is exactly what was saved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation; TTA views should stay within these strengths."""

    flip: bool = True  # horizontal flips: off for data where mirroring changes the class (digits, text)
    shift: float = 0.1  # translation as a fraction of the image side
    zoom: float = 0.1  # zoom in or out by up to this fraction


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every base model of a fit."""

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    early_stopping_patience: int = 6
    reduce_lr_patience: int = 3  # below the early-stopping patience, so the LR drops before training stops
    reduce_lr_factor: float = 0.3
    augmentation: Augmentation = Augmentation()

    def as_dict(self) -> dict:
        return asdict(self)


def make_augmenter(aug: Augmentation, seed: int) -> keras.Sequential:
    """The random augmentation applied to training batches only."""
    steps: list[keras.layers.Layer] = []
    if aug.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if aug.shift > 0:
        steps.append(keras.layers.RandomTranslation(aug.shift, aug.shift, fill_mode="nearest", seed=seed + 1))
    if aug.zoom > 0:
        steps.append(keras.layers.RandomZoom(aug.zoom, fill_mode="nearest", seed=seed + 2))
    return keras.Sequential(steps, name="augmentation")


def _training_dataset(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int) -> tf.data.Dataset:
    augment = make_augmenter(cfg.augmentation, seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size).map(
        lambda images, labels: (augment(tf.cast(images, "float32"), training=True), labels),
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def train_model(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    checkpoint_path: Path,
    seed: int = 0,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> tuple[keras.Model, dict]:
    """Fit ``model`` on raw-pixel ``train`` images, watching ``val``; return (best model, history).

    ``seed`` fixes shuffling and augmentation; seed Keras (``keras.utils.set_random_seed``)
    before building the model to fix its initial weights too. ``on_epoch_end(epoch, logs)``
    is called after each epoch, for progress display.

    The history holds each metric per epoch, the learning rate per epoch, and
    ``best_epoch`` (0-based) with that epoch's validation metrics.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.ModelCheckpoint(checkpoint_path, monitor="val_accuracy", mode="max", save_best_only=True),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience, min_lr=1e-6
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=cfg.early_stopping_patience, restore_best_weights=True
        ),
    ]
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end))
    fitted = model.fit(
        _training_dataset(*train, cfg, seed),
        validation_data=(val[0].astype("float32"), val[1]),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset reshuffles itself each epoch
        verbose=0,
    )
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    best = int(np.argmax(history["val_accuracy"]))  # first maximum, as ModelCheckpoint keeps it
    history["best_epoch"] = best
    history["best"] = {k: v[best] for k, v in history.items() if isinstance(v, list) and k.startswith("val_")}
    return keras.models.load_model(checkpoint_path), history
