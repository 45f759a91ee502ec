"""``stacking study finetune``: each strategy trains what it claims; the split, the table, the page and the winner."""

from __future__ import annotations

import json
from dataclasses import replace

import keras
import numpy as np
import pytest

from models.registry import BACKBONE, block_ids, create_model, get_spec
from models.training import train_model
from stacking.errors import UserError
from stacking.training.config import load_config
from stacking.training.finetune_study import STRATEGIES, pick_strategies, strategy_member, toml_model
from stacking.training.protocols import labelled_split
from tests.test_cli import one_line_error, run_cli
from tests.test_members import save_backbone

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, size=(48, 32, 32, 3)).astype("uint8")
Y = (X[..., 0].mean(axis=(1, 2)) > 127).astype("int64")
PATTERN = get_spec("mobilenetv3small").block_pattern


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "mobile.weights.h5"
    save_backbone(path)
    return path


def member_for(strategy: str, weights_file, epochs: int = 3):
    """The study's member for ``strategy``: MobileNetV3Small at 32 px from the file, one head epoch, two blocks."""
    base = load_config(None, {"models": ("mobilenetv3small@32",), "weights": str(weights_file)}).models[0]
    recipe = replace(base.train, epochs=epochs, head_epochs=1, fine_tune_blocks=2, batch_size=16)
    return strategy_member(replace(base, train=recipe), STRATEGIES[strategy])


def backbone_state(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.get_layer(BACKBONE).weights}


def trainable_blocks(model: keras.Model) -> set[str]:
    backbone = model.get_layer(BACKBONE)
    return {b for b, layer in zip(block_ids(backbone, PATTERN), backbone.layers) if b and layer.trainable_weights}


def train(member, tmp_path) -> tuple[keras.Model, dict, dict, list[set[str]]]:
    """Train ``member``; (the model as built, its backbone's weights before, the history, the trainable blocks at
    each epoch's end)."""
    keras.utils.set_random_seed(0)
    model = create_model(member.architecture, 2, member.image_size, weights=member.start)
    before, seen = backbone_state(model), []
    _, history = train_model(
        model,
        (X[:40], Y[:40]),
        (X[40:], Y[40:]),
        member.train,
        tmp_path / "m.keras",
        fine_tune=PATTERN if member.start else None,
        on_epoch_end=lambda *_: seen.append(trainable_blocks(model)),
    )
    return model, before, history, seen


def moved(before: dict, model: keras.Model, what: str) -> set[str]:
    """The backbone variables whose path contains ``what`` that training changed."""
    after = backbone_state(model)
    return {p for p in before if what in p and not np.array_equal(before[p], after[p])}


def test_head_leaves_every_backbone_weight_as_the_file_gave_it(weights_file, tmp_path):
    model, before, history, _ = train(member_for("head", weights_file), tmp_path)
    assert history["phase"] == [1, 1, 1] and moved(before, model, "") == set()


def top_layers(model: keras.Model, blocks: int) -> set[str]:
    """The backbone's layers from the first of its top ``blocks`` blocks on."""
    backbone = model.get_layer(BACKBONE)
    ids = block_ids(backbone, PATTERN)
    first = list(dict.fromkeys(b for b in ids if b))[-blocks]
    start = ids.index(first)
    return {layer.name for layer in backbone.layers[start:]}


def test_phased_keeps_batchnorm_statistics_and_phased_bn_trains_them(weights_file, tmp_path):
    model, before, history, _ = train(member_for("phased", weights_file), tmp_path)
    assert history["phase"] == [1, 2, 2]
    assert moved(before, model, "moving_") == set() and moved(before, model, "kernel")  # the top blocks trained
    model, before, _, _ = train(member_for("phased-bn", weights_file), tmp_path)
    statistics = {p.split("/")[0] for p in moved(before, model, "moving_")}
    assert statistics and statistics <= top_layers(model, 2)  # the unfrozen blocks' own, no others


def test_gradual_unfreezes_one_more_top_block_per_phase(weights_file, tmp_path):
    model, _, history, seen = train(member_for("gradual", weights_file), tmp_path)
    order = list(dict.fromkeys(b for b in block_ids(model.get_layer(BACKBONE), PATTERN) if b))
    assert history["phase"] == [1, 2, 3]
    assert seen == [set(), {order[-1]}, {order[-2], order[-1]}]  # from the top down, one block at a time


def test_full_trains_every_layer_from_the_first_epoch_batchnorm_frozen(weights_file, tmp_path):
    model, before, history, seen = train(member_for("full", weights_file), tmp_path)
    every = {b for b in block_ids(model.get_layer(BACKBONE), PATTERN) if b}
    assert history["phase"] == [1, 1, 1] and seen[0] == every
    assert moved(before, model, "moving_") == set()


def test_builder_momentum_is_the_trap_kept_and_matched_momentum_the_fix(weights_file, tmp_path):
    """MobileNetV3Small's builder sets 0.999: kept by scratch-builder-momentum, lowered by scratch."""
    momenta = {}
    for name in ("scratch", "scratch-builder-momentum"):
        model, _, _, _ = train(member_for(name, weights_file, epochs=1), tmp_path)
        momenta[name] = {
            layer.momentum
            for layer in model.get_layer(BACKBONE).layers
            if isinstance(layer, keras.layers.BatchNormalization)
        }
    assert momenta["scratch-builder-momentum"] == {0.999}
    assert max(momenta["scratch"]) < 0.999


def test_the_winner_table_reads_back_to_the_same_recipe(weights_file, tmp_path):
    member = member_for("gradual", weights_file)
    (tmp_path / "winner.toml").write_text(toml_model(member))
    again = load_config(tmp_path / "winner.toml", {}).models[0]
    assert again.train == member.train and again.weights == member.weights and again.image_size == 32
    scratch = member_for("scratch", weights_file)
    (tmp_path / "scratch.toml").write_text(toml_model(scratch))
    assert load_config(tmp_path / "scratch.toml", {}).models[0].start is None


def test_labelled_split_takes_n_per_class_and_holds_out_the_rest():
    labels = np.repeat(np.arange(3), 20)
    split = labelled_split(labels, 5, 0.2, seed=0, classes=["a", "b", "c"])
    labelled = np.concatenate([split.fit, split.val])
    assert np.bincount(labels[labelled]).tolist() == [5, 5, 5] and len(split.oof) == 45
    assert not set(labelled) & set(split.oof) and set(labelled) | set(split.oof) == set(range(60))
    assert np.bincount(labels[split.val]).tolist() == [1, 1, 1]
    again = labelled_split(labels, 5, 0.2, seed=0, classes=["a", "b", "c"])
    assert np.array_equal(again.fit, split.fit) and np.array_equal(again.oof, split.oof)
    with pytest.raises(UserError, match="--labelled-per-class 20"):
        labelled_split(labels, 20, 0.2, seed=0, classes=["a", "b", "c"])


def test_pick_strategies_names_the_unknown_one():
    assert [s.name for s in pick_strategies("head,scratch,head")] == ["head", "scratch"]
    assert len(pick_strategies(None)) == len(STRATEGIES)
    with pytest.raises(UserError, match="--strategies 'head,bogus'"):
        pick_strategies("head,bogus")


def test_the_study_end_to_end(digits_dir, weights_file, tmp_path, capsys):
    (tmp_path / "recipe.toml").write_text("[train]\nhead_epochs = 1\nbatch_size = 16\nfine_tune_blocks = 2\n")
    args = ["study", "finetune", "--data", digits_dir, "--model", "mobilenetv3small@32", "--weights", weights_file]
    args += ["--out", tmp_path / "study", "--epochs", "3", "--config", tmp_path / "recipe.toml"]
    code, out, err = run_cli([*args, "--strategies", "scratch,head,gradual"], capsys)
    assert code == 0, err
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    rows = {r["strategy"]: r for r in study["rows"]}
    assert set(rows) == {"scratch", "head", "gradual"}
    for row in rows.values():
        assert set(row) == {"strategy", "accuracy", "ci_low", "ci_high", "log_loss", "best_epoch", "epochs", "seconds"}
        assert 0 <= row["ci_low"] <= row["accuracy"] <= row["ci_high"] <= 1 and 1 <= row["best_epoch"] <= row["epochs"]
    assert [r["log_loss"] for r in study["rows"]] == sorted(r["log_loss"] for r in study["rows"])
    assert study["winner"] == study["rows"][0]["strategy"] and study["curves"]["gradual"]["phase"] == [1, 2, 3]
    n = study["images"]
    assert n["train"] + n["validation"] + n["held_out"] == sum(1 for _ in (digits_dir / "train").rglob("*.png"))
    page = (tmp_path / "study" / "index.html").read_text()
    assert all(f"<td>{name}</td>" in page for name in rows) and (tmp_path / "study" / "curves.png").stat().st_size
    assert f"winner by held-out log-loss: {study['winner']}" in out and "[[model]]" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--model", "mobilenetv3small@32", "--weights", "none", "--strategies", "scratch,head"],
            "--weights none: head",
        ),
        (["--model", "tiny_cnn@16", "--weights", "none"], "--model tiny_cnn"),
        (["--model", "mobilenetv3small@32", "--strategies", "bogus"], "--strategies 'bogus'"),
    ],
)
def test_study_errors_name_the_option(digits_dir, tmp_path, capsys, extra, message):
    code, _, err = run_cli(["study", "finetune", "--data", digits_dir, "--out", tmp_path / "s", *extra], capsys)
    assert message in one_line_error(code, err)
