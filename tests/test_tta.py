"""TTA views are the transforms they claim (TensorFlow's own, to the bit), and all views go through one forward pass."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from stacking.data.images import Pixels
from stacking.inference.tta import (
    TTAForward,
    TTAPolicy,
    View,
    ViewSet,
    make_views,
    merge_views,
    needs_more_views,
    run_tta,
)
from stacking.runtime import KerasRunner

RNG = np.random.default_rng(1)
PIXELS = RNG.integers(0, 256, size=(5, 8, 8, 3)).astype("uint8")
IMAGES = Pixels({8: PIXELS})  # the same images, as the forward pass takes them


def test_flip_and_shift_views_match_numpy():
    x = PIXELS.astype("float32")
    views = [View(), View(flip=True), View(dx=2), View(dy=-1)]
    out = make_views(x, views).reshape(4, *x.shape)
    np.testing.assert_array_equal(out[0], x)
    np.testing.assert_array_equal(out[1], x[:, :, ::-1])
    # dx=2 moves content right by 2 pixels, repeating the left edge.
    np.testing.assert_array_equal(out[2][:, :, 2:], x[:, :, :-2])
    np.testing.assert_array_equal(out[2][:, :, 0], x[:, :, 0])
    np.testing.assert_array_equal(out[3][:, :-1], x[:, 1:])


@pytest.mark.parametrize("policy", ["none", "flip", "shift", "flip-shift"])
def test_every_policy_starts_with_identity(policy):
    views = TTAPolicy(policy, views=100).view_list(32)
    assert views[0] == View()
    assert len(set(views)) == len(views)
    assert TTAPolicy(policy, views=0).view_list(32) == [View()]


def test_digits_policy_never_flips():
    assert not any(v.flip for v in TTAPolicy("shift", views=100).view_list(16))


def tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)  # must stay off at prediction time
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_forward_equals_per_view_predictions_and_is_deterministic():
    models = [tiny_model(0), tiny_model(1)]
    views = TTAPolicy("flip-shift", views=4).view_list(8)
    forward = TTAForward([KerasRunner([m]) for m in models], [8, 8], rows_per_call=8)  # 2 images a call: several calls
    per_view = forward(IMAGES, ViewSet.of(8, views))
    assert per_view.shape == (2, 4, 5, 3)
    stacked = make_views(PIXELS, views).reshape(4, 5, 8, 8, 3)
    for m, model in enumerate(models):
        for t in range(4):
            expected = model.predict(stacked[t], verbose=0)
            np.testing.assert_allclose(per_view[m, t], expected, atol=1e-5)
    np.testing.assert_array_equal(forward(IMAGES, ViewSet.of(8, views)), per_view)
    np.testing.assert_allclose(merge_views(per_view), per_view.mean(axis=1), rtol=1e-6)


def test_an_image_gets_the_same_bits_whatever_its_companions():
    # Every call has one shape, so a request of one image and a batch that starts with
    # it give identical bits; elsewhere in a batch, at most a last-bit difference.
    forward = TTAForward([KerasRunner([tiny_model(5)])], [8], rows_per_call=8)
    views = TTAPolicy("shift", views=2).views_at([8])
    alone = forward(IMAGES[3:4], views)
    np.testing.assert_array_equal(forward(IMAGES[3:], views)[:, :, :1], alone)
    np.testing.assert_array_equal(forward(IMAGES[[3, 0, 1, 2]], views)[:, :, :1], alone)
    np.testing.assert_allclose(forward(IMAGES, views)[:, :, 3:4], alone, rtol=1e-6)


def test_fold_members_are_averaged():
    a, b = tiny_model(2), tiny_model(3)
    views = ViewSet.identity([8])
    both = TTAForward([KerasRunner([a, b])], [8])(IMAGES, views)
    alone = [TTAForward([KerasRunner([m])], [8])(IMAGES, views) for m in (a, b)]
    np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, atol=1e-6)


def tiny_model_at(size: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))


def test_each_model_sees_the_images_and_views_at_its_own_size():
    """Two models at 8 and 16 px in one forward pass answer as each does alone, with the same view geometry."""
    small, large = tiny_model_at(8, 1), tiny_model_at(16, 2)
    images = Pixels({8: PIXELS, 16: PIXELS.repeat(2, axis=1).repeat(2, axis=2)})
    views = TTAPolicy("shift", views=3, shift=0.25).views_at([8, 16])
    assert [v.dx for v in views.at(8)] == [0, 2, -2] and [v.dx for v in views.at(16)] == [0, 4, -4]
    together = TTAForward([KerasRunner([small]), KerasRunner([large])], [8, 16], rows_per_call=6)(images, views)
    for m, (model, size) in enumerate(((small, 8), (large, 16))):
        alone = TTAForward([KerasRunner([model])], [size], rows_per_call=6)(images.only([size]), views)
        np.testing.assert_array_equal(together[m], alone[0])


def test_the_models_are_traced_once_for_every_view_list():
    forward = TTAForward([KerasRunner([tiny_model(4)])], [8], rows_per_call=6)
    views = TTAPolicy("shift", views=3).views_at([8])
    forward(IMAGES, views)
    forward(IMAGES[:1], views)
    forward(IMAGES, views[:2])
    forward(IMAGES, views[:1])
    assert forward.runners[0]._run.experimental_get_tracing_count() == 1


def tensorflow_view(x: np.ndarray, v: View) -> np.ndarray:
    """A view made with TensorFlow's own image ops, as the views were made before they moved to numpy."""
    y = tf.cast(tf.constant(x), tf.float32)
    y = tf.reverse(y, axis=[2]) if v.flip else y
    if v.zoom != 1.0:
        y = tf.image.resize(tf.image.central_crop(y, 1 / v.zoom), x.shape[1:3])
    size = x.shape[1]
    rows, cols = (tf.clip_by_value(tf.range(size) - d, 0, size - 1) for d in (v.dy, v.dx))
    return tf.gather(tf.gather(y, rows, axis=1), cols, axis=2).numpy()


@pytest.mark.parametrize("size", [8, 17, 32, 96])
def test_numpy_views_are_tensorflows_to_the_bit(size):
    # Bundles fitted before the views moved out of the graph keep their numbers exactly.
    x = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    views = {v for policy in ("flip-shift", "zoom", "random") for v in TTAPolicy(policy, views=99).view_list(size)}
    assert any(v.zoom != 1.0 for v in views) and any(v.flip for v in views)
    for v in views:
        np.testing.assert_array_equal(make_views(x, [v]), tensorflow_view(x, v), err_msg=v.name)


def test_geometric_merge_is_normalised_and_never_nan():
    per_view = np.array([[[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.9, 0.1]]]])  # (1 model, 2 views, 2 images, 2)
    merged = merge_views(per_view, "geometric")[0]
    assert np.isfinite(merged).all()
    np.testing.assert_allclose(merged.sum(axis=1), 1.0)
    np.testing.assert_allclose(merged[0], [0.5, 0.5])  # symmetric certainty cancels out
    expected = np.sqrt([0.5 * 0.9, 0.5 * 0.1])
    np.testing.assert_allclose(merged[1], expected / expected.sum())
    np.testing.assert_allclose(merge_views(per_view, "mean")[0], per_view[0].mean(axis=0))


def test_adaptive_tta_at_full_margin_equals_full_tta():
    forward = TTAForward([KerasRunner([tiny_model(5)]), KerasRunner([tiny_model(6)])], [8, 8])
    views = TTAPolicy("shift", views=9).views_at([8])
    full = run_tta(forward, IMAGES, views, TTAPolicy("shift", views=9))
    adaptive = run_tta(forward, IMAGES, views, TTAPolicy("shift", views=9, adaptive_views=2, adaptive_margin=1.0))
    np.testing.assert_allclose(adaptive.merged, full.merged, atol=1e-6)
    assert (adaptive.views_used == 9).all()
    np.testing.assert_array_equal(adaptive.view_labels, full.view_labels)


def test_adaptive_tta_stops_early_only_where_views_agree_and_margin_is_wide():
    forward = TTAForward([KerasRunner([tiny_model(7)])], [8])
    views = TTAPolicy("shift", views=9).views_at([8])
    policy = TTAPolicy("shift", views=9, adaptive_views=2, adaptive_margin=0.0)
    result = run_tta(forward, IMAGES, views, policy)
    first = forward(IMAGES, views[:2])
    unsure = needs_more_views(first, policy, 0.0)
    np.testing.assert_array_equal(result.views_used, np.where(unsure, 9, 2))
    np.testing.assert_allclose(result.merged[:, ~unsure], merge_views(first)[:, ~unsure], atol=1e-6)
    assert (result.view_labels[2:, ~unsure] == -1).all()


def test_needs_more_views_flags_disagreement_and_narrow_margins():
    agree_wide = [[0.9, 0.1], [0.8, 0.2]]
    agree_narrow = [[0.55, 0.45], [0.6, 0.4]]
    disagree = [[0.9, 0.1], [0.2, 0.8]]
    first = np.array([agree_wide, agree_narrow, disagree]).transpose(1, 0, 2)[None]  # (1 model, 2 views, 3, 2)
    assert needs_more_views(first, TTAPolicy(), 0.0).tolist() == [False, False, True]
    assert needs_more_views(first, TTAPolicy(), 0.3).tolist() == [False, True, True]


def test_zoom_view_crops_the_centre():
    x = np.zeros((1, 8, 8, 3), np.float32)
    x[:, 2:6, 2:6] = 255.0  # a centred square of half the side
    out = make_views(x, [View(zoom=2.0)])
    assert out.min() > 250  # zoomed 2x into the centre, the square fills the image


def test_random_views_are_fixed_by_the_seed_and_follow_the_augmentation():
    a = TTAPolicy("random", views=32, seed=3, allow_flip=False).view_list(32)
    b = TTAPolicy("random", views=32, seed=3, allow_flip=False).view_list(32)
    c = TTAPolicy("random", views=32, seed=4, allow_flip=False).view_list(32)
    assert a == b and a != c and a[0] == View()
    assert not any(v.flip for v in a)
    assert all(abs(v.dx) <= round(0.06 * 32) and 1.0 <= v.zoom <= 1.1 for v in a)
    assert any(v.flip for v in TTAPolicy("random", views=32, seed=3).view_list(32))


def test_identity_weight_tilts_the_merge_towards_the_identity_view():
    per_view = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # identity says class 0, the other view class 1
    np.testing.assert_allclose(merge_views(per_view, "mean", identity_weight=3.0)[0, 0], [0.75, 0.25])
