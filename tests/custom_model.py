"""A user's own model builder, as ``--models tests.custom_model:build`` names it."""

from __future__ import annotations

import keras


def build(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def not_a_model(input_shape, num_classes):
    return "nope"
