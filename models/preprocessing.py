"""Each architecture's input normalisation as Keras layers inside the model graph.

Every saved model therefore takes raw RGB pixels 0..255, and training, offline
prediction and the service can never normalise differently. Only built-in or
registered layers are used (no ``Lambda``), so ``.keras`` files load with
``safe_mode=True``.
"""

from __future__ import annotations

import keras
from keras import layers

# The ImageNet statistics that keras.applications' ``preprocess_input`` uses.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)

MODES = ("unit", "tf", "caffe", "torch", "raw")


@keras.saving.register_keras_serializable(package="stackserve")
class ReverseChannels(layers.Layer):
    """RGB -> BGR, as caffe-style models expect."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=-1)


def preprocessing_layers(mode: str) -> list[layers.Layer]:
    """The layers that turn raw 0..255 RGB into what an architecture was trained on.

    ``unit``: x / 255 (the built-in small models). ``tf``: [-1, 1] (Xception,
    ResNetV2, Inception, MobileNet v1/v2). ``caffe``: BGR minus the ImageNet mean
    (ResNet v1, VGG). ``torch``: ImageNet mean/std (DenseNet). ``raw``: nothing,
    because the architecture rescales inside itself (EfficientNet, ConvNeXt, ...).
    """
    if mode == "unit":
        return [layers.Rescaling(1.0 / 255, name="preprocess_unit")]
    if mode == "tf":
        return [layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_tf")]
    if mode == "caffe":
        return [
            ReverseChannels(name="preprocess_bgr"),
            layers.Normalization(mean=list(CAFFE_MEAN_BGR), variance=[1.0, 1.0, 1.0], name="preprocess_caffe"),
        ]
    if mode == "torch":
        return [
            layers.Rescaling(1.0 / 255, name="preprocess_unit"),
            layers.Normalization(mean=list(TORCH_MEAN), variance=[s * s for s in TORCH_STD], name="preprocess_torch"),
        ]
    if mode == "raw":
        return []
    raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {', '.join(MODES)}")


def apply_preprocessing(inputs, mode: str):
    """Apply :func:`preprocessing_layers` to a symbolic tensor."""
    x = inputs
    for layer in preprocessing_layers(mode):
        x = layer(x)
    return x
