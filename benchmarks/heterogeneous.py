"""Homogeneous against heterogeneous stacks on the digits: does a stack of different networks at different sizes gain
more over its best member than one of networks at one size?

Writes the digits with 60% of the scans (1,079) kept as an untouched test split, as
``stacking_accuracy.py`` does, fits each stack on the rest (holdout protocol, the demo's
TTA and recipe) and prints, per stack: each member's test accuracy, the stack's with its
bootstrap 95% interval and log-loss, its gain over its best member (chosen by OOF
accuracy, never the test labels) with a 95% paired bootstrap interval, the members' mean
pairwise OOF correlation, the fit's wall time and the served stack's images/s (measured
by the fit through the prediction path). ``--json FILE`` keeps every number.

    python benchmarks/heterogeneous.py [--workdir DIR] [--epochs E] [--stacks a,b,c]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from stacking.bundle import load_oof
from stacking.data.digits import write_digits
from stacking.inference.predictor import Predictor
from stacking.reporting.evaluate import evaluate_folder
from stacking.training.config import load_config
from stacking.training.fit import fit

COMMON = """protocol = "holdout"
seed = 0
weights = "none"
[tta]
policy = "shift"
views = 5
shift = 0.07
[train]
epochs = {epochs}
learning_rate = 0.002
[augmentation]
flip = false
shift = 0.1
zoom = 0.1
"""
STACKS = {
    # today's default: three built-in kinds at the default size
    "homogeneous": ["tiny_cnn@32", "small_resnet@32", "mini_mobilenet@32"],
    # the same kinds, each at a size of its own, at about the same cost
    "heterogeneous": ["tiny_cnn@16", "small_resnet@32", "mini_mobilenet@40"],
    # a keras.applications member from scratch beside two built-ins, three sizes
    "with-mobilenetv3": ["tiny_cnn@16", "small_resnet@24", "mobilenetv3small@48"],
}


def config(stack: list[str], epochs: int) -> str:
    tables = "".join(
        f'[[model]]\narchitecture = "{spec.split("@")[0]}"\nimage_size = {spec.split("@")[1]}\n' for spec in stack
    )
    return COMMON.format(epochs=epochs) + tables


def measure(name: str, data: Path, workdir: Path, epochs: int) -> dict:
    path = workdir / f"{name}.toml"
    path.write_text(config(STACKS[name], epochs))
    bundle = workdir / name
    started = time.monotonic()
    manifest = fit(data, bundle, load_config(path, {}), echo=lambda _: None)
    seconds = time.monotonic() - started
    probs = load_oof(bundle)["probabilities"]
    corr = np.corrcoef(probs.reshape(len(probs), -1))
    rows, count, _ = evaluate_folder(Predictor(bundle), data / "test", data / "test_labels.csv")
    members = [r for r in rows if r["kind"] == "base"]
    stack = next(r for r in rows if r["served"])
    gain = stack["paired"][0]
    return {
        "stack": name,
        "members": {r["name"]: r["accuracy"] for r in members},
        "sizes": {b.name: b.image_size for b in manifest.base_models},
        "accuracy": stack["accuracy"],
        "ci": [stack["ci_low"], stack["ci_high"]],
        "log_loss": stack["log_loss"],
        "chosen": manifest.meta_learner.kind,
        "gain_over_best": gain["accuracy"],
        "log_loss_gain_over_best": gain["log_loss"],
        "best_member": gain["against"],
        "oof_correlation": float(corr[np.triu_indices(len(probs), 1)].mean()),
        "fit_seconds": round(seconds, 1),
        "images_per_second": round(1000 / manifest.serving.timing.stack_ms, 1),
        "test_images": count,
    }


def print_table(results: list[dict]) -> None:
    print(
        "| stack | members (size: test accuracy) | stack accuracy [95%] | log-loss | gain over best member [95%] "
        "| OOF corr | fit s | images/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        members = ", ".join(f"{n}@{r['sizes'][n]}: {a:.4f}" for n, a in r["members"].items())
        g = r["gain_over_best"]
        print(
            f"| {r['stack']} | {members} | {r['accuracy']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] ({r['chosen']}) "
            f"| {r['log_loss']:.4f} | {g['difference']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}] "
            f"| {r['oof_correlation']:.3f} | {r['fit_seconds']:.0f} | {r['images_per_second']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/heterogeneous"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = args.workdir / "digits"
    if not data.is_dir():
        write_digits(data, test_fraction=0.6)
    results = [measure(name, data, args.workdir, args.epochs) for name in args.stacks.split(",")]
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
