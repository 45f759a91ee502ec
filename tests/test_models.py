"""The registry: every model takes raw 0..255 pixels, with its family's own preprocessing inside."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models.registry import _APPLICATIONS, BACKBONE, create_model, get_spec, list_models
from models.training import TrainConfig, match_batchnorm_momentum, train_model
from stacking.data.datasets import load_pixels, read_training_set
from stacking.data.digits import write_digits

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, size=(2, 32, 32, 3)).astype("float32")

# One registered model per keras.applications module, with that module's official preprocess_input.
FAMILIES = {
    "xception": keras.applications.xception,
    "inceptionv3": keras.applications.inception_v3,
    "inceptionresnetv2": keras.applications.inception_resnet_v2,
    "mobilenet": keras.applications.mobilenet,
    "mobilenetv2": keras.applications.mobilenet_v2,
    "resnet50v2": keras.applications.resnet_v2,
    "resnet50": keras.applications.resnet50,
    "vgg16": keras.applications.vgg16,
    "vgg19": keras.applications.vgg19,
    "densenet121": keras.applications.densenet,
    "mobilenetv3small": keras.applications.mobilenet_v3,
    "convnexttiny": keras.applications.convnext,
    "efficientnetb0": keras.applications.efficientnet,
    "efficientnetv2b0": keras.applications.efficientnet_v2,
}


def family_of(name: str) -> str:
    """The representative in FAMILIES built by the same keras.applications module as ``name``."""
    module = getattr(keras.applications, _APPLICATIONS[name][0]).__module__
    return next(f for f in FAMILIES if getattr(keras.applications, _APPLICATIONS[f][0]).__module__ == module)


def test_every_registered_application_has_a_tested_family():
    for name in list_models(builtin=False):
        representative = family_of(name)
        assert get_spec(name).preprocessing == get_spec(representative).preprocessing, name


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_in_graph_preprocessing_equals_official(name):
    """The built model's own preprocessing (before the backbone) equals the official preprocess_input."""
    size = get_spec(name).min_image_size if get_spec(name).min_image_size > 32 else 32
    model = create_model(name, num_classes=3, image_size=size, weights=None)
    backbone = model.get_layer(BACKBONE)
    pixels = RNG.integers(0, 256, size=(2, size, size, 3)).astype("float32")
    # What reaches the backbone: the output of the model's layers before it.
    before = keras.Model(model.input, model.layers[model.layers.index(backbone) - 1].output)
    ours = before.predict(pixels, verbose=0)
    theirs = np.asarray(FAMILIES[name].preprocess_input(pixels.copy()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_registry_lists_builtins_and_applications():
    assert set(list_models(builtin=True)) == {"tiny_cnn", "small_resnet", "mini_mobilenet"}
    assert {"xception", "resnet50v2", *(f"efficientnetb{i}" for i in range(8))} <= set(list_models())
    with pytest.raises(KeyError, match="unknown model 'nope'; known models:"):
        get_spec("nope")


@pytest.mark.parametrize("name", list_models(builtin=True))
def test_builtin_models_give_probabilities(name):
    model = create_model(name, num_classes=5, image_size=16)
    probs = model.predict(PIXELS[:, :16, :16], verbose=0)
    assert probs.shape == (2, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_application_model_with_lean_head_saves_and_loads_safely(tmp_path):
    model = create_model("resnet50", num_classes=3, image_size=32, weights=None)
    names = [layer.name for layer in model.layers]
    assert names[-3:] == ["head_pool", "head_dropout", "head_softmax"]  # no hidden dense, no BN in the head
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(PIXELS, verbose=0), model.predict(PIXELS, verbose=0), atol=1e-5)


def test_image_size_below_minimum_is_refused():
    with pytest.raises(ValueError, match="needs image_size >= 71"):
        create_model("xception", 2, 32)


def test_training_keeps_the_best_epoch(tmp_path):
    x = RNG.integers(0, 256, size=(64, 16, 16, 3)).astype("uint8")
    y = (x[:, :, :, 0].mean(axis=(1, 2)) > 127).astype("int64")
    cfg = TrainConfig(epochs=4, batch_size=16, early_stopping_patience=10)
    model, history = train_model(
        create_model("tiny_cnn", 2, 16), (x[:48], y[:48]), (x[48:], y[48:]), cfg, tmp_path / "best.keras", seed=1
    )
    best = history["best_epoch"]
    assert history["best"]["val_accuracy"] == max(history["val_accuracy"]) == history["val_accuracy"][best]
    assert len(history["learning_rate"]) == len(history["loss"])
    saved = keras.models.load_model(tmp_path / "best.keras")
    accuracy = (saved.predict(x[48:].astype("float32"), verbose=0).argmax(1) == y[48:]).mean()
    assert accuracy == pytest.approx(history["best"]["val_accuracy"])


def _batchnorms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _batchnorms(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found


def test_batchnorm_momentum_is_matched_to_the_schedule():
    """keras.applications builds BatchNorm with momentum 0.999: lowered so one epoch forgets the start."""
    model = create_model("mobilenetv3small", 3, 32, weights=None)
    layers = _batchnorms(model)
    assert {layer.momentum for layer in layers} == {0.999}
    assert match_batchnorm_momentum(model, steps_per_epoch=300) == len(layers) > 30
    assert all(layer.momentum == pytest.approx(0.01 ** (1 / 300)) for layer in layers)  # 1% of the start after 300
    assert match_batchnorm_momentum(model, steps_per_epoch=10) == len(layers)
    assert {layer.momentum for layer in layers} == {0.9}  # a short epoch: still an average over ~10 batches
    builtin = create_model("tiny_cnn", 3, 16)
    for steps in (5, 1000):
        assert match_batchnorm_momentum(builtin, steps_per_epoch=steps) == 0  # 0.9 is never raised or lowered
    assert {layer.momentum for layer in _batchnorms(builtin)} == {0.9}


@pytest.mark.slow
def test_an_applications_model_trained_from_scratch_validates_above_chance(tmp_path):
    """Issue 27's defect: with the builders' momentum such a model trained to 0.8 and validated at 0.10."""
    write_digits(tmp_path / "digits")
    images, pixels, _ = load_pixels(read_training_set(tmp_path / "digits"), [32])
    x, y = pixels.at(32), images.labels
    order = np.random.default_rng(0).permutation(len(y))
    fit, val = order[:1100], order[1100:]
    keras.utils.set_random_seed(0)
    model = create_model("mobilenetv3small", 10, 32, weights=None)
    cfg = TrainConfig(epochs=6, early_stopping_patience=6)
    saved, history = train_model(model, (x[fit], y[fit]), (x[val], y[val]), cfg, tmp_path / "m.keras", seed=0)
    assert history["best"]["val_accuracy"] > 0.6, history["val_accuracy"]
    assert {layer.momentum for layer in _batchnorms(saved)} == {0.9}  # the served model keeps the matched momentum
