"""Fine-tuning as an expert would: phases, frozen BatchNorm, discriminative Adam, your own model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models.registry import BACKBONE, block_ids, create_model, get_spec
from models.training import DiscriminativeAdam, TrainConfig, class_weights, train_model, unfreeze_top_blocks

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, size=(48, 32, 32, 3)).astype("uint8")
Y = (X[..., 0].mean(axis=(1, 2)) > 127).astype("int64")


def bn_statistics(model: keras.Model) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(v)
        for layer in model.get_layer(BACKBONE).layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


def test_heads():
    lean = create_model("mobilenetv3small", 4, 32)
    assert not {"head_dense", "head_bn"} & {layer.name for layer in lean.layers}
    dense = create_model("mobilenetv3small", 4, 32, head="gap-dense")
    assert {"head_dense", "head_bn"} <= {layer.name for layer in dense.layers}
    with pytest.raises(ValueError, match="head 'mlp'"):
        create_model("mobilenetv3small", 4, 32, head="mlp")


def test_unfreeze_top_blocks_keeps_batchnorm_frozen():
    model = create_model("efficientnetb0", 2, 32)
    backbone = model.get_layer(BACKBONE)
    unfreeze_top_blocks(backbone, get_spec("efficientnetb0").block_pattern, 2)
    ids = block_ids(backbone, get_spec("efficientnetb0").block_pattern)
    trainable = {b for b, layer in zip(ids, backbone.layers) if layer.trainable and b}
    assert trainable == {"block6d", "block7a"}  # the top two whole blocks
    assert not any(layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert backbone.get_layer("top_conv").trainable and not backbone.get_layer("block6c_project_conv").trainable


def test_two_phases_leave_batchnorm_statistics_untouched(tmp_path):
    keras.utils.set_random_seed(0)
    model = create_model("mobilenetv3small", 2, 32)
    before = bn_statistics(model)
    kernel = lambda name: keras.ops.convert_to_numpy(model.get_layer(BACKBONE).get_layer(name).kernel)  # noqa: E731
    low = kernel("expanded_conv_project")
    cfg = TrainConfig(epochs=3, head_epochs=1, fine_tune_blocks=2, batch_size=16, early_stopping_patience=5)
    trained, history = train_model(
        model,
        (X[:40], Y[:40]),
        (X[40:], Y[40:]),
        cfg,
        tmp_path / "m.keras",
        fine_tune=get_spec("mobilenetv3small").block_pattern,
    )
    assert history["phase"] == [1, 2, 2]
    assert history["learning_rate"][0] == pytest.approx(1e-3) and history["learning_rate"][1] == pytest.approx(1e-4)
    for a, b in zip(before, bn_statistics(model)):
        np.testing.assert_array_equal(a, b)
    # Phase 2 trained the top blocks only (random-init weights give them near-zero gradients, so
    # their values prove little; the flags and the untouched low block do).
    assert model.get_layer(BACKBONE).get_layer("expanded_conv_10_project").trainable
    assert not model.get_layer(BACKBONE).get_layer("expanded_conv_project").trainable
    np.testing.assert_array_equal(low, kernel("expanded_conv_project"))
    assert history["best"]["val_accuracy"] == max(history["val_accuracy"])
    assert isinstance(trained, keras.Model)


def test_phase_one_trains_the_head_only(tmp_path):
    keras.utils.set_random_seed(0)
    model = create_model("mobilenetv3small", 2, 32)
    frozen = [keras.ops.convert_to_numpy(w) for w in model.get_layer(BACKBONE).weights]
    head = keras.ops.convert_to_numpy(model.get_layer("head_softmax").kernel)
    cfg = TrainConfig(epochs=1, head_epochs=1, batch_size=16)
    train_model(
        model,
        (X[:40], Y[:40]),
        (X[40:], Y[40:]),
        cfg,
        tmp_path / "m.keras",
        fine_tune=get_spec("mobilenetv3small").block_pattern,
    )
    for a, b in zip(frozen, model.get_layer(BACKBONE).weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    assert not np.array_equal(head, keras.ops.convert_to_numpy(model.get_layer("head_softmax").kernel))


def one_step(factor: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(backbone kernel before, after, head kernel before, after) for one optimiser step."""
    keras.utils.set_random_seed(1)
    model = create_model("tiny_cnn", 2, 16)
    optimizer = keras.optimizers.Adam(0.01) if factor is None else DiscriminativeAdam(factor, learning_rate=0.01)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    conv, head = model.get_layer("block0a_conv").kernel, model.get_layer("head_softmax").kernel
    before = keras.ops.convert_to_numpy(conv), keras.ops.convert_to_numpy(head)
    model.train_on_batch(X[:8, :16, :16].astype("float32"), Y[:8])
    return before[0], keras.ops.convert_to_numpy(conv), before[1], keras.ops.convert_to_numpy(head)


def test_discriminative_adam_scales_the_backbone_step_not_the_gradient():
    b0, b1, h0, h1 = one_step(0.0)
    np.testing.assert_array_equal(b0, b1)  # a zero rate: the backbone does not move
    assert not np.array_equal(h0, h1)  # the head does
    _, tenth, _, _ = one_step(0.1)
    _, plain, _, plain_head = one_step(None)
    _, same, _, same_head = one_step(1.0)
    np.testing.assert_allclose(same, plain, rtol=1e-6)  # factor 1 is plain Adam
    np.testing.assert_allclose(same_head, plain_head, rtol=1e-6)
    # Adam's first step moves each weight by about lr; a tenth of the rate, a tenth of the move.
    np.testing.assert_allclose(np.abs(tenth - b0).max(), 0.1 * np.abs(plain - b0).max(), rtol=0.05)


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
    assert class_weights(np.array([0, 1]), 2, "none") is None
