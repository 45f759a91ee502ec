"""Registry of base architectures: small built-ins, the keras.applications families, your own.

``create_model(name, ...)`` returns a Keras model that takes raw RGB pixels 0..255
(its preprocessing is a layer inside it) and ends in a lean head: global average
pooling, dropout, softmax (``head="gap-dense"`` adds one hidden dense layer).
``list_models()`` names every registered architecture. A name of the form
``pkg.module:function`` calls ``function((size, size, 3), num_classes)`` instead, which
must return a complete model taking raw pixels.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import layers

from models.choices import Head
from models.preprocessing import apply_preprocessing

Backbone = Callable[[keras.KerasTensor, str | None], keras.KerasTensor]
BACKBONE = "backbone"  # the name of a keras.applications backbone inside a built model


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the registry knows of one architecture."""

    name: str
    build_backbone: Backbone | None  # None for a custom model, which its own function builds whole
    preprocessing: str
    min_image_size: int = 32
    builtin: bool = False  # small enough to train in seconds on a CPU; has no ImageNet weights
    # Regex whose first group names the block a backbone layer belongs to, for
    # unfreezing whole blocks when fine-tuning (keras.applications families only).
    block_pattern: str | None = None


_REGISTRY: dict[str, ArchitectureSpec] = {}


def register_model(
    name: str, preprocessing: str, min_image_size: int = 32, builtin: bool = False, block_pattern: str | None = None
):
    """Decorator: register a backbone builder ``f(x, weights) -> feature map``."""

    def wrap(build: Backbone) -> Backbone:
        _REGISTRY[name] = ArchitectureSpec(name, build, preprocessing, min_image_size, builtin, block_pattern)
        return build

    return wrap


def list_models(builtin: bool | None = None) -> list[str]:
    """Registered names; ``builtin=True`` keeps only the small CPU-friendly ones."""
    return sorted(n for n, s in _REGISTRY.items() if builtin is None or s.builtin == builtin)


def is_custom(name: str) -> bool:
    """``pkg.module:function`` names a user's own model builder."""
    return ":" in name


def get_spec(name: str) -> ArchitectureSpec:
    """The spec of ``name``; a KeyError that lists the known names otherwise."""
    if is_custom(name):
        return ArchitectureSpec(name, build_backbone=None, preprocessing="custom", min_image_size=1)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}, or pkg.module:function"
        ) from None


def load_custom_builder(name: str) -> Callable[[tuple[int, int, int], int], keras.Model]:
    """Import ``pkg.module:function``; a ValueError says what is wrong with the name."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model {name!r}: cannot import {module_name!r} ({exc})") from None
    builder = getattr(module, attribute, None)
    if not callable(builder):
        raise ValueError(f"model {name!r}: {module_name} has no function {attribute!r}")
    return builder


def import_custom_module(name: str) -> None:
    """Import the module of ``pkg.module:function``, so layers it registers load from ``.keras`` files."""
    load_custom_builder(name)


def _create_custom(name: str, num_classes: int, image_size: int) -> keras.Model:
    model = load_custom_builder(name)((image_size, image_size, 3), num_classes)
    if not isinstance(model, keras.Model):
        raise ValueError(f"model {name!r}: the function returned {type(model).__name__}, not a keras.Model")
    if tuple(model.input_shape[1:]) != (image_size, image_size, 3) or model.output_shape[-1] != num_classes:
        raise ValueError(
            f"model {name!r}: expected input (None, {image_size}, {image_size}, 3) and {num_classes} outputs, "
            f"got input {model.input_shape} and output {model.output_shape}"
        )
    return model


def create_model(
    name: str,
    num_classes: int,
    image_size: int,
    weights: str | None = None,
    head: str = "gap",
    dropout: float = 0.2,
    head_units: int = 256,
) -> keras.Model:
    """Build ``name`` for ``image_size`` x ``image_size`` RGB input and ``num_classes``.

    A keras.applications backbone is a nested model named ``BACKBONE``. Its call's
    ``training=False`` does not keep BatchNorm in inference mode: Keras 3 replaces it with
    the outer model's flag when that trains. A BatchNorm layer runs in inference mode (its
    pretrained statistics kept) because it is frozen (``trainable = False``, see
    ``models.training.unfreeze_top_blocks``); one that trains updates its statistics.
    """
    if is_custom(name):
        return _create_custom(name, num_classes, image_size)
    spec = get_spec(name)
    if image_size < spec.min_image_size:
        raise ValueError(f"model {name!r} needs image_size >= {spec.min_image_size}, got {image_size}")
    if spec.builtin and weights is not None:
        raise ValueError(f"model {name!r} is a built-in architecture and has no {weights!r} weights")
    if head not in tuple(Head):
        raise ValueError(f"head {head!r}: expected one of {', '.join(Head)}")
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = apply_preprocessing(inputs, spec.preprocessing)
    x = spec.build_backbone(x, weights)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    if head == Head.GAP_DENSE:
        x = layers.Dense(head_units, use_bias=False, name="head_dense")(x)
        x = layers.BatchNormalization(name="head_bn")(x)
        x = layers.Activation("relu", name="head_relu")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="head_softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def block_ids(backbone: keras.Model, pattern: str) -> list[str | None]:
    """The block each backbone layer belongs to (None for layers outside any block)."""
    regex = re.compile(pattern)
    return [(m.group(1) if (m := regex.search(layer.name)) else None) for layer in backbone.layers]


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

# Block patterns per keras.applications module: group 1 names a layer's block.
_BLOCKS = {
    "xception": r"^(block\d+)_",
    "inception_v3": r"^(mixed\d+)$",
    "inception_resnet_v2": r"^(block\d+_\d+)_",
    "mobilenet": r"^conv_(?:dw|pw)_(\d+)",
    "mobilenet_v2": r"^(block_\d+)_",
    "mobilenet_v3": r"^(expanded_conv(?:_\d+)?)_",
    "resnet": r"^(conv\d_block\d+)_",
    "resnet_v2": r"^(conv\d_block\d+)_",
    "densenet": r"^(conv\d_block\d+)_",
    "vgg": r"^(block\d+)_",
    "convnext": r"_(stage_\d+_block_\d+)_",
    "efficientnet": r"^(block\d+[a-z])_",
}

_APPLICATIONS: dict[str, tuple[str, str, int, str]] = {
    # registry name: (keras.applications attribute, preprocessing mode, minimum image size, block family)
    "xception": ("Xception", "tf", 71, "xception"),
    "inceptionv3": ("InceptionV3", "tf", 75, "inception_v3"),
    "inceptionresnetv2": ("InceptionResNetV2", "tf", 75, "inception_resnet_v2"),
    "mobilenet": ("MobileNet", "tf", 32, "mobilenet"),
    "mobilenetv2": ("MobileNetV2", "tf", 32, "mobilenet_v2"),
    "resnet50v2": ("ResNet50V2", "tf", 32, "resnet_v2"),
    "resnet101v2": ("ResNet101V2", "tf", 32, "resnet_v2"),
    "resnet152v2": ("ResNet152V2", "tf", 32, "resnet_v2"),
    "resnet50": ("ResNet50", "caffe", 32, "resnet"),
    "resnet101": ("ResNet101", "caffe", 32, "resnet"),
    "resnet152": ("ResNet152", "caffe", 32, "resnet"),
    "vgg16": ("VGG16", "caffe", 32, "vgg"),
    "vgg19": ("VGG19", "caffe", 32, "vgg"),
    "densenet121": ("DenseNet121", "torch", 32, "densenet"),
    "densenet169": ("DenseNet169", "torch", 32, "densenet"),
    "densenet201": ("DenseNet201", "torch", 32, "densenet"),
    "mobilenetv3small": ("MobileNetV3Small", "raw", 32, "mobilenet_v3"),
    "mobilenetv3large": ("MobileNetV3Large", "raw", 32, "mobilenet_v3"),
    "convnexttiny": ("ConvNeXtTiny", "raw", 32, "convnext"),
    "convnextsmall": ("ConvNeXtSmall", "raw", 32, "convnext"),
    "convnextbase": ("ConvNeXtBase", "raw", 32, "convnext"),
    **{f"efficientnetb{i}": (f"EfficientNetB{i}", "raw", 32, "efficientnet") for i in range(8)},
    **{f"efficientnetv2b{i}": (f"EfficientNetV2B{i}", "raw", 32, "efficientnet") for i in range(4)},
    "efficientnetv2s": ("EfficientNetV2S", "raw", 32, "efficientnet"),
    "efficientnetv2m": ("EfficientNetV2M", "raw", 32, "efficientnet"),
    "efficientnetv2l": ("EfficientNetV2L", "raw", 32, "efficientnet"),
}


def application_name(name: str) -> str:
    """The keras.applications class behind a registered name (``mobilenetv3small`` -> ``MobileNetV3Small``)."""
    return _APPLICATIONS[name][0] if name in _APPLICATIONS else name


def _application_backbone(attribute: str) -> Backbone:
    def build(x, weights):
        # ``weights="imagenet"`` downloads once into ~/.keras/models; tests use None.
        backbone = getattr(keras.applications, attribute)(
            include_top=False, weights=weights, input_shape=tuple(x.shape[1:])
        )
        backbone.name = BACKBONE  # set afterwards: some builders look their defaults up by name
        return backbone(x, training=False)

    build.__doc__ = f"keras.applications.{attribute} without its classifier."
    return build


for _name, (_attribute, _mode, _min_size, _family) in _APPLICATIONS.items():
    register_model(_name, preprocessing=_mode, min_image_size=_min_size, block_pattern=_BLOCKS[_family])(
        _application_backbone(_attribute)
    )
