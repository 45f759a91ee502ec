"""The accuracy-cost frontier: every way a bundle can answer, on a held-out test split, and the service per option.

Digits with 60% held out (by default made harder: pixel noise and a grey square over
part of each scan, since at 16 px the clean scans are so easy that the best single
model ties the stack): half of the held-out part is the test split, half an unlabelled
pool (labels dropped) for ``stacking distill --unlabelled``. Fits a bundle (the demo config,
``--protocol``), distils four students on copies of it (taught consistently, the default, and
the old fixed way; each from the OOF rows alone and with the pool too), evaluates every
option on the test split in one run, then
serves each servable option in turn and drives it with 32 concurrent clients
(``benchmarks/load.py``). Prints the table and the issue's targets, writes JSON.

Usage: python benchmarks/serving_options.py [--workdir artifacts/bench-options] [--data noisy|clean] [--protocol kfold]
       [--student small_resnet] [--copies 8] [--requests 384] [--json benchmarks/results/serving_options.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from load import measure, test_images  # noqa: E402

from stacking.bundle import Trust, load_manifest, load_oof  # noqa: E402
from stacking.data.cache import PixelCache  # noqa: E402
from stacking.data.digits import write_digits  # noqa: E402
from stacking.inference.predictor import Predictor  # noqa: E402
from stacking.reporting.evaluate import evaluate_folder, format_table  # noqa: E402
from stacking.training.config import load_config  # noqa: E402
from stacking.training.costing import add_serving  # noqa: E402
from stacking.training.distill import Teaching, distill, oof_pixels  # noqa: E402
from stacking.training.fit import fit  # noqa: E402

HELD_OUT = 0.6  # of the 1,797 scans; half of it is the unlabelled pool
NOISE = 72  # grey levels of Gaussian noise on every pixel of the "noisy" set
BLOCK = 12  # side of the grey square hiding part of each 32 px "noisy" scan


def corrupt(folder: Path) -> None:
    """Make every scan harder to read: pixel noise and a grey square at a random place (seeded by the file name)."""
    for path in sorted(folder.rglob("*.png")):
        rng = np.random.default_rng(zlib.crc32(path.name.encode()))
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        pixels += rng.normal(0, NOISE, pixels.shape)
        top, left = rng.integers(0, pixels.shape[0] - BLOCK, 2)
        pixels[top : top + BLOCK, left : left + BLOCK] = 128
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB").save(path)


def make_data(out: Path, noisy: bool) -> Path:
    """Digits with 60% held out, the held-out part split into ``test/`` (labelled) and ``unlabelled/``."""
    if (out / "unlabelled").is_dir():
        return out
    write_digits(out, test_fraction=HELD_OUT)
    if noisy:
        corrupt(out)
    labels = pd.read_csv(out / "test_labels.csv")
    pool = labels.iloc[1::2]
    (out / "unlabelled").mkdir()
    for name in pool["Id"]:
        shutil.move(out / "test" / name, out / "unlabelled" / name)
    labels.iloc[0::2].to_csv(out / "test_labels.csv", index=False)
    (out / "sample_submission.csv").unlink()
    return out


# Each student beside the main bundle's (consistent teaching, labelled rows only): its bundle copy's folder name,
# --teaching, and whether it also learns from the unlabelled pool.
STUDENTS = {
    "student + unlabelled": ("bundle-pooled", "consistent", True),
    "student (fixed)": ("bundle-fixed", "fixed", False),
    "student (fixed) + unlabelled": ("bundle-fixed-pooled", "fixed", True),
}


def frontier_rows(bundle: Path, data: Path, others: dict[str, Path]) -> list[dict]:
    """Every option of ``bundle`` on the test split, plus each other bundle's student row, costs measured in one
    run."""
    rows, _, _ = evaluate_folder(Predictor(bundle), data / "test", data / "test_labels.csv")
    for name, other in others.items():
        other_rows, _, _ = evaluate_folder(Predictor(other), data / "test", data / "test_labels.csv")
        rows.append({**next(r for r in other_rows if r["name"] == "student"), "name": name})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "artifacts" / "bench-options")
    parser.add_argument("--protocol", default="kfold")
    parser.add_argument(
        "--data",
        choices=("noisy", "clean"),
        default="noisy",
        help="noisy: the scans with pixel noise and a hidden square (the clean digits are too easy "
        "for a stack to beat its best model at 16 px)",
    )
    parser.add_argument("--student", default="small_resnet")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--copies", type=int, default=Teaching.copies, help="consistent teaching's pictures per image")
    parser.add_argument("--requests", type=int, default=384)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "serving_options.json")
    args = parser.parse_args()
    data = make_data(args.workdir / f"digits-{args.data}", args.data == "noisy")
    bundle = args.workdir / "bundle"
    started = time.monotonic()
    if not (bundle / "manifest.json").is_file():
        config = load_config(
            ROOT / "stacking" / "configs" / "digits.toml", {"protocol": args.protocol, "epochs": args.epochs}
        )
        fit(data, bundle, config, echo=print)
    else:  # fitted by an earlier run: its options timed and its cascade tuned again, by this code, on this machine
        manifest = load_manifest(bundle)
        manifest = manifest.model_copy(update={"serving": manifest.serving.model_copy(update={"student": None})})
        ids = load_oof(bundle)["ids"]
        add_serving(
            bundle,
            manifest,
            oof_pixels(manifest, ids, None, manifest.sizes, PixelCache(), print),
            manifest.config["seed"],
            Trust(),
            print,
        )
    fitted = time.monotonic()
    others = {name: args.workdir / folder for name, (folder, _, _) in STUDENTS.items()}
    for other in others.values():
        shutil.rmtree(other, ignore_errors=True)
        shutil.copytree(bundle, other)
    teaching = {}
    for name, where, method, pool in [("student", bundle, "consistent", False)] + [
        (name, others[name], method, pool) for name, (_, method, pool) in STUDENTS.items()
    ]:
        manifest = distill(
            where,
            args.student,
            data / "unlabelled" if pool else None,
            epochs=args.epochs,
            echo=print,
            teaching=Teaching(method, copies=args.copies),
        )
        teaching[name] = manifest.serving.student.teaching.model_dump()
    distilled = time.monotonic()
    rows = frontier_rows(bundle, data, others)
    print(format_table(rows))
    images = test_images(data / "test", 64)
    service = {}
    for option, where in (("stack", bundle), ("cascade", bundle), ("student", bundle)):
        service[option] = measure(where, images, [32], args.requests, {"STACKSERVE_SERVE_AS": option})[32]
        print(
            f"service --serve-as {option}: {service[option]['images_per_s']:.1f} images/s at 32 clients, "
            f"p50 {service[option]['p50_ms']:.1f} ms"
        )
    by_name = {r["name"]: r for r in rows}
    stack = next(r for r in rows if r["kind"] == "chosen")
    best = max((r for r in rows if r["kind"] == "base"), key=lambda r: r["accuracy"])
    gain = stack["accuracy"] - best["accuracy"]
    cascade, student, pooled_student = by_name["cascade"], by_name["student"], by_name["student + unlabelled"]
    # One view through each base model's first (or only) fold model, and the student's one view, timed by the fit
    # and by distill on this machine in this run (ms per image).
    final = load_manifest(bundle)
    view_ms, student_ms = dict(final.serving.timing.view_ms), final.serving.student.ms_per_image
    print(f"one view, ms per image: {view_ms}; the student: {student_ms:.3g}")
    targets = {
        "stack_beats_best_base": gain > 0,
        "cascade_within_0.2pt": cascade["accuracy"] >= stack["accuracy"] - 0.002,
        "cascade_half_the_passes": cascade["cost_views"] <= 0.5 * stack["cost_views"],
        "student_half_the_gain": student["accuracy"] >= best["accuracy"] + gain / 2,
        "pooled_student_within_0.3pt": pooled_student["accuracy"] >= stack["accuracy"] - 0.003,
        "student_at_most_the_cheapest_view": student_ms <= min(view_ms.values()),
        "service_cascade_1.8x": service["cascade"]["images_per_s"] >= 1.8 * service["stack"]["images_per_s"],
    }
    print("\n".join(f"{'met ' if ok else 'MISS'}  {name}" for name, ok in targets.items()))
    result = {
        "data": args.data,
        "protocol": args.protocol,
        "student": args.student,
        "test_images": len(pd.read_csv(data / "test_labels.csv")),
        "rows": rows,
        "service_32_clients": service,
        "teaching": teaching,
        "one_view_ms": {**view_ms, "student": student_ms},
        "targets": targets,
        "seconds": {"fit": round(fitted - started, 1), "distill_all": round(distilled - fitted, 1)},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
