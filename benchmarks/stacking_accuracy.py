"""Does the chosen stack beat its best base model and the plain mean on images nobody tuned on?

Fits the bundled digits with three small architectures of different kinds (a plain CNN,
a residual net, a depthwise-separable MobileNet-style net) once per protocol (holdout,
kfold), then scores every base model, every meta candidate and the chosen stack on the
untouched test split, with bootstrap 95% intervals. Digits are easy, so by default 60%
of the scans are kept for testing: fewer training images leave the base models room to
err, and a large test split makes the comparison precise. Prints one table per protocol
with the verdict (stack above the best single model and not below the mean) and the
wall time of each fit; writes JSON.

Usage: python benchmarks/stacking_accuracy.py [--workdir DIR] [--folds K] [--test-fraction F] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path

from stacking.data.digits import write_digits
from stacking.inference.predictor import Predictor
from stacking.reporting.evaluate import evaluate_folder, format_table
from stacking.training.config import load_config
from stacking.training.fit import fit


def verdict(rows: list[dict]) -> dict:
    base = [r for r in rows if r["kind"] == "base"]
    best = max(base, key=lambda r: r["accuracy"])
    mean = next(r for r in rows if r["name"] == "mean")
    stack = next(r for r in rows if r["kind"] == "chosen")
    return {
        "best_single": best["name"],
        "best_single_accuracy": best["accuracy"],
        "mean_accuracy": mean["accuracy"],
        "stack": stack["name"],
        "stack_accuracy": stack["accuracy"],
        "beats_best_single": stack["accuracy"] > best["accuracy"],
        "not_below_mean": stack["accuracy"] >= mean["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-stacking"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--test-fraction", type=float, default=0.6)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/stacking_accuracy.json"))
    args = parser.parse_args()
    data = args.workdir / "digits"
    counts = write_digits(data, test_fraction=args.test_fraction)
    config = Path(str(files("stacking") / "configs" / "digits.toml"))
    results = {}
    for protocol in ("holdout", "kfold"):
        started = time.monotonic()
        bundle = args.workdir / protocol
        manifest = fit(
            data, bundle, load_config(config, {"protocol": protocol, "folds": args.folds}), echo=lambda _: None
        )
        seconds = round(time.monotonic() - started, 1)
        rows, count, _ = evaluate_folder(Predictor(bundle), data / "test", data / "test_labels.csv")
        results[protocol] = {
            "rows": rows,
            "fit_seconds": seconds,
            "test_images": count,
            "oof_rows": manifest.metrics.oof_rows,
            "chosen_reason": manifest.meta_learner.selection.reason,
            **verdict(rows),
        }
    print(
        f"digits: {counts['train']} training scans, {counts['test']} test scans; models "
        f"{', '.join(m.spec for m in load_config(config, {}).models)}"
    )
    for protocol, result in results.items():
        print(
            f"\n== {protocol}: fit {result['fit_seconds']} s wall, {result['oof_rows']} OOF rows, "
            f"{result['test_images']} test images"
        )
        print(format_table(result["rows"]))
        print(f"chosen: {result['chosen_reason']}")
        print(
            f"stack {result['stack_accuracy']:.4f} vs best single ({result['best_single']}) "
            f"{result['best_single_accuracy']:.4f}: {'above' if result['beats_best_single'] else 'NOT above'}; "
            f"vs mean {result['mean_accuracy']:.4f}: {'not below' if result['not_below_mean'] else 'BELOW'}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
