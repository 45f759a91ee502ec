"""Registry of base architectures: small built-ins and the keras.applications families.

``create_model(name, ...)`` returns a Keras model that takes raw RGB pixels 0..255
(its preprocessing is a layer inside it) and ends in a lean head: global average
pooling, dropout, softmax. ``list_models()`` names every registered architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
from keras import layers

from models.preprocessing import apply_preprocessing

Backbone = Callable[[keras.KerasTensor, str | None], keras.KerasTensor]


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the registry knows of one architecture."""

    name: str
    build_backbone: Backbone
    preprocessing: str
    min_image_size: int = 32
    builtin: bool = False  # small enough to train in seconds on a CPU; has no ImageNet weights


_REGISTRY: dict[str, ArchitectureSpec] = {}


def register_model(name: str, preprocessing: str, min_image_size: int = 32, builtin: bool = False):
    """Decorator: register a backbone builder ``f(x, weights) -> feature map``."""

    def wrap(build: Backbone) -> Backbone:
        _REGISTRY[name] = ArchitectureSpec(name, build, preprocessing, min_image_size, builtin)
        return build

    return wrap


def list_models(builtin: bool | None = None) -> list[str]:
    """Registered names; ``builtin=True`` keeps only the small CPU-friendly ones."""
    return sorted(n for n, s in _REGISTRY.items() if builtin is None or s.builtin == builtin)


def get_spec(name: str) -> ArchitectureSpec:
    """The spec of ``name``; a KeyError that lists the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(
    name: str,
    num_classes: int,
    image_size: int,
    weights: str | None = None,
    dropout: float = 0.2,
) -> keras.Model:
    """Build ``name`` for ``image_size`` x ``image_size`` RGB input and ``num_classes``."""
    spec = get_spec(name)
    if image_size < spec.min_image_size:
        raise ValueError(f"model {name!r} needs image_size >= {spec.min_image_size}, got {image_size}")
    if spec.builtin and weights is not None:
        raise ValueError(f"model {name!r} is a built-in architecture and has no {weights!r} weights")
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = apply_preprocessing(inputs, spec.preprocessing)
    x = spec.build_backbone(x, weights)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="head_softmax")(x)
    return keras.Model(inputs, outputs, name=name)


# --- small built-in architectures: different inductive biases, for a diverse stack ---


# Moving statistics settle within a few dozen steps: the built-ins train on small data
# for few epochs, where Keras' default momentum (0.99) leaves them far from the data.
BN_MOMENTUM = 0.9


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def _conv_bn(x, filters: int, kernel: int = 3, strides: int = 1, name: str = ""):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = _bn(f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


@register_model("tiny_cnn", preprocessing="unit", min_image_size=8, builtin=True)
def tiny_cnn(x, weights):
    """A VGG-like stack of plain 3x3 convolutions."""
    for i, filters in enumerate((32, 64, 96)):
        x = _conv_bn(x, filters, name=f"block{i}a")
        x = _conv_bn(x, filters, name=f"block{i}b")
        if i < 2:
            x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return x


@register_model("small_resnet", preprocessing="unit", min_image_size=8, builtin=True)
def small_resnet(x, weights):
    """Pre-activation-free residual blocks with strided downsampling."""
    x = _conv_bn(x, 32, name="stem")
    for i, filters in enumerate((32, 64, 128)):
        strides = 1 if i == 0 else 2
        shortcut = x
        y = _conv_bn(x, filters, strides=strides, name=f"res{i}a")
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"res{i}b_conv")(y)
        y = _bn(f"res{i}b_bn")(y)
        if strides != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"res{i}_proj")(shortcut)
            shortcut = _bn(f"res{i}_proj_bn")(shortcut)
        x = layers.Activation("relu", name=f"res{i}_out")(layers.Add(name=f"res{i}_add")([y, shortcut]))
    return x


@register_model("mini_mobilenet", preprocessing="unit", min_image_size=8, builtin=True)
def mini_mobilenet(x, weights):
    """Depthwise-separable convolutions with 5x5 kernels: a wider receptive field."""
    x = _conv_bn(x, 24, name="stem")
    for i, (filters, strides) in enumerate(((48, 1), (96, 2), (128, 2), (160, 1))):
        x = layers.DepthwiseConv2D(5, strides=strides, padding="same", use_bias=False, name=f"sep{i}_dw")(x)
        x = _bn(f"sep{i}_dw_bn")(x)
        x = layers.Activation("relu", name=f"sep{i}_dw_relu")(x)
        x = _conv_bn(x, filters, kernel=1, name=f"sep{i}_pw")
    return x


# --- keras.applications families, each with the preprocessing its weights expect ---

_APPLICATIONS: dict[str, tuple[str, str, int]] = {
    # registry name: (keras.applications attribute, preprocessing mode, minimum image size)
    "xception": ("Xception", "tf", 71),
    "inceptionv3": ("InceptionV3", "tf", 75),
    "inceptionresnetv2": ("InceptionResNetV2", "tf", 75),
    "mobilenet": ("MobileNet", "tf", 32),
    "mobilenetv2": ("MobileNetV2", "tf", 32),
    "resnet50v2": ("ResNet50V2", "tf", 32),
    "resnet101v2": ("ResNet101V2", "tf", 32),
    "resnet152v2": ("ResNet152V2", "tf", 32),
    "resnet50": ("ResNet50", "caffe", 32),
    "resnet101": ("ResNet101", "caffe", 32),
    "resnet152": ("ResNet152", "caffe", 32),
    "vgg16": ("VGG16", "caffe", 32),
    "vgg19": ("VGG19", "caffe", 32),
    "densenet121": ("DenseNet121", "torch", 32),
    "densenet169": ("DenseNet169", "torch", 32),
    "densenet201": ("DenseNet201", "torch", 32),
    "mobilenetv3small": ("MobileNetV3Small", "raw", 32),
    "mobilenetv3large": ("MobileNetV3Large", "raw", 32),
    "convnexttiny": ("ConvNeXtTiny", "raw", 32),
    "convnextsmall": ("ConvNeXtSmall", "raw", 32),
    "convnextbase": ("ConvNeXtBase", "raw", 32),
    **{f"efficientnetb{i}": (f"EfficientNetB{i}", "raw", 32) for i in range(8)},
    **{f"efficientnetv2b{i}": (f"EfficientNetV2B{i}", "raw", 32) for i in range(4)},
    "efficientnetv2s": ("EfficientNetV2S", "raw", 32),
    "efficientnetv2m": ("EfficientNetV2M", "raw", 32),
    "efficientnetv2l": ("EfficientNetV2L", "raw", 32),
}


def _application_backbone(attribute: str) -> Backbone:
    def build(x, weights):
        # ``weights="imagenet"`` downloads once into ~/.keras/models; tests use None.
        backbone = getattr(keras.applications, attribute)(
            include_top=False, weights=weights, input_shape=tuple(x.shape[1:])
        )
        return backbone(x)

    build.__doc__ = f"keras.applications.{attribute} without its classifier."
    return build


for _name, (_attribute, _mode, _min_size) in _APPLICATIONS.items():
    register_model(_name, preprocessing=_mode, min_image_size=_min_size)(_application_backbone(_attribute))
