"""Accuracy of each base model, their mean and the stack on the digits' untouched test split.

Fits the bundled digits once per protocol (holdout, kfold) with the demo's settings and
prints two tables from one run: the protocols and the stack's gain over averaging, and
each architecture's chosen epoch with its validation and test accuracy. Usage: python benchmarks/digits_accuracy.py [--workdir DIR] [--folds K] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path

from stacking.config import load_config
from stacking.digits import write_digits
from stacking.evaluate import evaluate_folder
from stacking.fit import fit
from stacking.predictor import Predictor


def _best_epochs(bundle: Path, manifest: dict) -> dict[str, list[tuple[int, int, float]]]:
    """Per base model and fold: (chosen epoch, 1-based; epochs run; its validation accuracy)."""
    out = {}
    for entry in manifest["base_models"]:
        folds = json.loads((bundle / entry["history"]).read_text())["folds"]
        out[entry["name"]] = [(h["best_epoch"] + 1, len(h["loss"]), h["best"]["val_accuracy"]) for h in folds]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-digits"))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/digits_accuracy.json"))
    args = parser.parse_args()
    data = args.workdir / "digits"
    write_digits(data)
    config = Path(str(files("stacking") / "configs" / "digits.toml"))
    results = {}
    for protocol in ("holdout", "kfold"):
        started = time.monotonic()
        bundle = args.workdir / protocol
        fit(data, bundle, load_config(config, {"protocol": protocol, "folds": args.folds}), echo=lambda _: None)
        predictor = Predictor(bundle)
        rows, count, _ = evaluate_folder(predictor, data / "test", data / "test_labels.csv")
        results[protocol] = {"rows": rows, "fit_seconds": round(time.monotonic() - started, 1), "test_images": count,
                             "oof_rows": predictor.manifest["metrics"]["oof_rows"],
                             "best_epochs": _best_epochs(bundle, predictor.manifest)}
    print(f"{'protocol':<8}  {'model':<16}  accuracy  log_loss")
    for protocol, result in results.items():
        for row in result["rows"]:
            print(f"{protocol:<8}  {row['model']:<16}  {row['accuracy']:>8.4f}  {row['log_loss']:>8.4f}")
        print(f"{protocol:<8}  fit {result['fit_seconds']} s, {result['oof_rows']} OOF rows, "
              f"{result['test_images']} test images")
    print(f"\n{'protocol':<8}  {'model':<16}  {'fold':>4}  {'epoch':>9}  val_acc  test_acc (of the served model)")
    for protocol, result in results.items():
        test = {r["model"]: r["accuracy"] for r in result["rows"]}
        for name, folds in result["best_epochs"].items():
            for k, (best, ran, val) in enumerate(folds):
                print(f"{protocol:<8}  {name:<16}  {k:>4}  {f'{best}/{ran}':>9}  {val:.4f}   {test[name]:.4f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
