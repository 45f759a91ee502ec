"""A deliberately overfitting base model: a wide layer of random high-frequency features.

4,096 fixed random cosine features of the raw pixels (random Fourier features with a
short length scale) make almost every image its own direction, so the trained softmax
on top memorises the training images in a few epochs (training accuracy 100%) while
generalising far worse than a CNN: what a meta-learner fitted on in-sample
predictions would trust blindly.
"""

from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="stackserve_tests")
def cosine(x):
    return keras.ops.cos(x)


def build(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(
        4096,
        activation=cosine,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.5),
        bias_initializer=keras.initializers.RandomUniform(0, 2 * math.pi),
        trainable=False,
    )(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))
