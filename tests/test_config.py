"""Settings: the manual's documented defaults are the code's, and overrides layer correctly."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from stacking.errors import UserError
from stacking.training.config import FitConfig, load_config

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_manuals_defaults_are_the_codes(tmp_path):
    """The configuration reference, as generated for the manual, written back as a TOML file, is the default
    config: every key in it, each default the one the code uses, each table named as the file names it."""
    sys.path.insert(0, str(DOCS))
    try:
        import hooks
    finally:
        sys.path.remove(str(DOCS))
    toml = []
    for table in hooks.fit_reference().split("### ")[1:]:
        title, _, rows = table.partition("\n")
        if title == "[[model]]":
            continue  # its values default to the top level's
        toml.append("" if title == "Top level" else title)
        for key, default in re.findall(r"^\| `(\w+)` \| [^|]* \| `([^`]*)` \|", rows, re.M):
            toml.append(f"{key} = {default}")
    path = tmp_path / "defaults.toml"
    path.write_text("\n".join(toml) + "\n")
    assert load_config(path, {}) == FitConfig()
    written = set(re.findall(r"^(\w+) =", path.read_text(), re.M))
    assert set(FitConfig.__dataclass_fields__) - {"tta", "train", "cluster", "models"} <= written


def test_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('protocol = "kfold"\nseed = 4\n[train]\nepochs = 9\n[tta]\npolicy = "shift"\n')
    cfg = load_config(path, {"seed": 7, "epochs": None, "tta_views": 3})
    assert (cfg.protocol, cfg.seed, cfg.train.epochs, cfg.tta.name, cfg.tta.views) == ("kfold", 7, 9, "shift", 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"folds": 1}, "--folds 1: Input should be greater than or equal to 2"),
        ({"tta_views": -1}, "--tta -1: Input should be greater than or equal to 0"),
        ({"tta_policy": "spin"}, "--tta-policy 'spin': Input should be 'none', 'flip', 'shift'"),
        ({"executor": "spark"}, "--executor 'spark': Input should be 'local' or 'ray'"),
        ({"meta": "svm"}, "--meta 'svm': Input should be 'auto', 'best-single'"),
        ({"epochs": 0}, "--epochs 0: Input should be greater than or equal to 1"),
        ({"models": ()}, "--models: no base model given"),
    ],
)
def test_bad_options_are_named_by_their_flag(overrides, message):
    """The same setting from the command line is named by its flag, from a file by its table and key."""
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, overrides)


def test_a_file_setting_is_named_by_its_table_and_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('folds = 1\n[tta]\npolicy = "spin"\n')
    with pytest.raises(UserError, match=re.escape("folds 1: Input should be greater than or equal to 2")):
        load_config(path, {})
    path.write_text('[tta]\npolicy = "spin"\n[cluster]\ncpus_per_job = 0\n')
    with pytest.raises(UserError, match=re.escape("[tta] policy 'spin': Input should be")):
        load_config(path, {})
    path.write_text("[augmentation]\nzoom = 2\n")
    with pytest.raises(UserError, match=re.escape("[augmentation] zoom 2: Input should be less than 1")):
        load_config(path, {})


@pytest.mark.parametrize(
    "text, message",
    [
        ('head = "mlp"\n', "head 'mlp'"),
        ('[train]\nclass_weight = "auto"\n', "class_weight 'auto'"),
        ("[augmentation]\nblur = 0.1\n", "[augmentation]: unknown setting(s) ['blur']; known: flip, shift, rotate"),
        ('[tta]\nname = "flip"\n', "[tta]: unknown setting(s) ['name']; known: policy, views"),
        ("protocol = \n", "not valid TOML"),
        ("[train]\nreduce_lr_patience = 6\n", "reduce_lr_patience 6: must be below early_stopping_patience 6"),
        # TTA views must stay within what the training augmentation taught the models.
        ('[tta]\npolicy = "flip"\n[augmentation]\nflip = false\n', "its views mirror images"),
        (
            '[tta]\npolicy = "shift"\nshift = 0.2\n',
            "[tta] shift 0.2: larger than the training augmentation's shift 0.1",
        ),
        ('[tta]\npolicy = "zoom"\nzoom = 0.3\n', "[tta] zoom 0.3: larger than"),
        ("[tta]\nallow_flip = true\n", "allow_flip follows [augmentation] flip"),
        # A [[model]] table's problems are named by the table (its name, or architecture) and key.
        ('[[model]]\narchitecture = "tiny_cnn"\nlr = 1\n', "[[model]] 'tiny_cnn': unknown setting(s) ['lr']; known: "),
        ('[[model]]\narchitecture = "tiny_cnn"\n[model.train]\nlr = 1\n', "[[model]] 'tiny_cnn' train: unknown"),
        ('[[model]]\nname = "a"\n', "[[model]] 'a' architecture: required"),
        ('[[model]]\narchitecture = "tiny_cnn"\n[[model]]\narchitecture = "tiny_cnn"\n', "['tiny_cnn'] given twice"),
        ('[[model]]\narchitecture = "mobilenetv3small"\nimage_size = 16\n', "image_size 16: mobilenetv3small needs"),
        ('[[model]]\narchitecture = "tiny_cnn"\nweights = "imagenet"\n', "is a built-in architecture without"),
        ('[[model]]\narchitecture = "mobilenetv2"\nweights = "gone.h5"\n', "weights '"),
        ('[[model]]\narchitecture = "mobilenetv2"\nweights = "w.bin"\n', "path of a Keras weights file"),
        ('[[model]]\narchitecture = "tiny_cnn"\n[model.train]\nepochs = 0\n', "[[model]] 'tiny_cnn' train.epochs 0"),
        ('models = ["tiny_cnn"]\n[[model]]\narchitecture = "tiny_cnn"\n', "models = [...] or [[model]] tables"),
        ('[[model]]\narchitecture = "nope"\n', "[[model]] 'nope': unknown model 'nope'"),
        ('models = ["tiny_cnn@big"]\n', "expected ARCH or ARCH@SIZE"),
    ],
)
def test_bad_settings_are_named(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(path, {})


def test_random_views_follow_the_augmentation_flip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[tta]\npolicy = "random"\nviews = 8\n[augmentation]\nflip = false\n')
    assert load_config(path, {}).tta.allow_flip is False


MEMBERS = """
image_size = 24
weights = "none"
[train]
epochs = 9
learning_rate = 0.002
[augmentation]
zoom = 0.15

[[model]]
architecture = "tiny_cnn"

[[model]]
name = "mob"
architecture = "mobilenetv3small"
image_size = 48
weights = "start.weights.h5"
dropout = 0.4
[model.train]
learning_rate = 0.0003
[model.augmentation]
zoom = 0.05
"""


def test_each_model_table_overrides_the_top_level_defaults(tmp_path):
    (tmp_path / "start.weights.h5").write_bytes(b"")  # exists: its content is checked when the fit starts
    path = tmp_path / "c.toml"
    path.write_text(MEMBERS)
    tiny, mob = load_config(path, {}).models
    assert (tiny.name, tiny.image_size, tiny.weights, tiny.dropout) == ("tiny_cnn", 24, "none", 0.2)
    assert (tiny.train.epochs, tiny.train.learning_rate, tiny.train.augmentation.zoom) == (9, 0.002, 0.15)
    assert (mob.name, mob.image_size, mob.dropout) == ("mob", 48, 0.4)
    assert mob.weights == str(tmp_path / "start.weights.h5")  # relative to the file, not the working folder
    assert (mob.train.epochs, mob.train.learning_rate, mob.train.augmentation.zoom) == (9, 0.0003, 0.05)
    assert load_config(path, {}).sizes == [24, 48]
    # The command line has the last word everywhere it speaks; --models ARCH@SIZE keeps its own size.
    flagged = load_config(path, {"epochs": 2, "image_size": 32}).models
    assert [(m.train.epochs, m.image_size) for m in flagged] == [(2, 32), (2, 32)]
    shorthand = load_config(path, {"models": ("tiny_cnn@16", "small_resnet"), "image_size": 20}).models
    assert [m.spec for m in shorthand] == ["tiny_cnn@16", "small_resnet@20"]
    assert all(m.train.learning_rate == 0.002 for m in shorthand)  # the file's [train] is still the default
