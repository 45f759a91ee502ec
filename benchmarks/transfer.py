"""Does fine-tuning a pretrained backbone pay on this machine, and which way? A transfer made offline, then the study.

ImageNet weights cannot be downloaded here, so the pretrained backbone is our own:
MobileNetV3Small at 48 px, weights none, trained on a source task made offline: the 26
capital letters rendered from every font Debian's fonts-dejavu packages install (regular,
bold, oblique, condensed, serif, mono), shrunk to a random 7-16 px and blown up again
(blocky, like the scans), jittered in size, place and angle. Its backbone's weights are
saved without the top, as a user's weights file. The target is another task: the bundled
digits (10 classes the source never saw), with ``--per-class`` labelled scans per class
(default 10 and 50), the rest held out; ``stacking study finetune`` runs every strategy on
it. Prints one table (held-out accuracy with its bootstrap interval, log-loss, best epoch)
and the gain of the best pretrained strategy over ``scratch``. ``--json FILE`` keeps it.

    python benchmarks/transfer.py [--workdir DIR] [--per-class 10,50] [--epochs 30] [--source-epochs 12]
        [--strategies a,b,..]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stacking.data.digits import write_digits  # noqa: E402

FONTS = Path("/usr/share/fonts/truetype/dejavu")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SIZE = 48
ARCH = "mobilenetv3small"

RECIPE = """weights = "none"
seed = 0
[tta]
policy = "shift"
[augmentation]
flip = false
shift = 0.1
zoom = 0.1
[train]
head_epochs = 5
fine_tune_blocks = 3
"""


def render(letter: str, font: Path, rng: np.random.Generator) -> np.ndarray:
    """One letter, white on black, at a random size, place and angle, through a random low resolution."""
    img = Image.new("L", (SIZE, SIZE))
    face = ImageFont.truetype(str(font), int(rng.integers(26, 40)))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=face)
    x = (SIZE - (right - left)) / 2 - left + rng.uniform(-4, 4)
    y = (SIZE - (bottom - top)) / 2 - top + rng.uniform(-4, 4)
    draw.text((x, y), letter, fill=int(rng.integers(180, 256)), font=face)
    img = img.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR)
    low = int(rng.integers(7, 17))
    img = img.resize((low, low), Image.Resampling.BOX).resize((SIZE, SIZE), Image.Resampling.NEAREST)
    return np.repeat(np.asarray(img)[..., None], 3, axis=2)


def source_task(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    fonts = sorted(FONTS.glob("*.ttf"))
    if not fonts:
        raise SystemExit(f"no fonts in {FONTS}: install Debian's fonts-dejavu-core and fonts-dejavu-extra")
    rng = np.random.default_rng(seed)
    x = np.stack([render(c, fonts[i % len(fonts)], rng) for c in LETTERS for i in range(per_class)])
    y = np.repeat(np.arange(len(LETTERS)), per_class)
    return x, y


def pretrain(out: Path, per_class: int, epochs: int) -> dict:
    """Train the backbone on the letters (weights none) and save it without its top; its held-out letter accuracy."""
    import keras

    from models.registry import BACKBONE, create_model
    from models.training import Augmentation, TrainConfig, train_model

    x, y = source_task(per_class)
    order = np.random.default_rng(1).permutation(len(y))
    cut = len(y) // 10
    val, fit = order[:cut], order[cut:]
    keras.utils.set_random_seed(0)
    model = create_model(ARCH, len(LETTERS), SIZE, weights=None)
    cfg = TrainConfig(epochs=epochs, augmentation=Augmentation(flip=False, shift=0.05, zoom=0.05))
    started = time.monotonic()
    trained, history = train_model(model, (x[fit], y[fit]), (x[val], y[val]), cfg, out / "source.keras", seed=0)
    trained.get_layer(BACKBONE).save_weights(out / "letters.weights.h5")
    return {
        "images": len(y),
        "classes": len(LETTERS),
        "fonts": len(sorted(FONTS.glob("*.ttf"))),
        "epochs": len(history["loss"]),
        "val_accuracy": history["best"]["val_accuracy"],
        "seconds": round(time.monotonic() - started),
    }


def study(data: Path, weights: Path, out: Path, per_class: int, epochs: int, strategies: str | None) -> dict:
    from stacking.data.cache import PixelCache
    from stacking.training.config import load_config
    from stacking.training.finetune_study import pick_strategies, run_study

    (out / "recipe.toml").parent.mkdir(parents=True, exist_ok=True)
    (out / "recipe.toml").write_text(RECIPE)
    cfg = load_config(
        out / "recipe.toml", {"models": (f"{ARCH}@{SIZE}",), "weights": str(weights), "epochs": epochs, "seed": 0}
    )
    return run_study(
        data, out, cfg, pick_strategies(strategies), per_class, print, cache=PixelCache(out.parent / "cache")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/stackserve-transfer"))
    parser.add_argument("--per-class", default="10,50", help="labelled digit scans per class, one study each")
    parser.add_argument("--epochs", type=int, default=30, help="each strategy's epochs")
    parser.add_argument("--source-per-class", type=int, default=300, help="rendered letters per class")
    parser.add_argument("--source-epochs", type=int, default=12)
    parser.add_argument("--strategies", help="a,b,...: these strategies only (default: every one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    source = pretrain(work, args.source_per_class, args.source_epochs)
    print(f"source: {source}")
    digits = work / "digits"
    if not (digits / "train").is_dir():
        write_digits(digits)
    studies = {
        n: study(digits, work / "letters.weights.h5", work / f"study{n}", n, args.epochs, args.strategies)
        for n in (int(v) for v in args.per_class.split(","))
    }
    result = {"source": source, "studies": studies}
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


def print_table(result: dict) -> None:
    studies = result["studies"]
    counts = list(studies)
    print("| strategy | " + " | ".join(f"{n}/class: accuracy [95% CI], log-loss, best epoch" for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    by_name = {n: {r["strategy"]: r for r in studies[n]["rows"]} for n in counts}
    for name in studies[counts[0]]["strategies"]:
        cells = [
            f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}], {r['log_loss']:.3f}, "
            f"{r['best_epoch']}/{r['epochs']}"
            for r in (by_name[n][name] for n in counts)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for n in counts:
        rows = by_name[n]
        if "scratch" not in rows or all(k.startswith("scratch") for k in rows):
            continue  # nothing to compare
        pretrained = max((r for k, r in rows.items() if not k.startswith("scratch")), key=lambda r: r["accuracy"])
        gain = pretrained["accuracy"] - rows["scratch"]["accuracy"]
        print(f"{n}/class: best pretrained ({pretrained['strategy']}) minus scratch: {100 * gain:+.1f} points")


if __name__ == "__main__":
    main()
