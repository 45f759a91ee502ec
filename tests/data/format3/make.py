"""How ``bundle/`` and ``answers.npz`` here were made: run at commit a30d057 (format 3, before each base model had its
own size), ``PYTHONPATH=<that checkout> python make.py WORK OUT``. The answers are that code's on the first 20 test
scans of ``write_digits(limit=200)``; tests/test_bundle.py checks this version serves the bundle with the same bits."""

import sys
from pathlib import Path

import numpy as np

from stacking.data.datasets import load_pixels, read_labels_csv
from stacking.data.digits import write_digits
from stacking.inference.predictor import Predictor
from stacking.training.config import load_config
from stacking.training.fit import fit

work, out = Path(sys.argv[1]), Path(sys.argv[2])
write_digits(work / "digits", limit=200)
cfg = load_config(
    None,
    {
        "models": ("mini_mobilenet",),
        "image_size": 12,
        "epochs": 3,
        "meta": "logreg",
        "tta_policy": "shift",
        "tta_views": 2,
        "seed": 0,
        "runtime": "litert",
    },
)
fit(work / "digits", out / "bundle", cfg, echo=print)
predictor = Predictor(out / "bundle")
test = read_labels_csv(work / "digits" / "test_labels.csv", work / "digits" / "test", predictor.classes)
test = test.subset(range(20))
_, pixels, _ = load_pixels(test, 12)
answer = predictor.predict(pixels)
np.savez(
    out / "answers.npz", ids=np.array(test.ids), probabilities=answer.probabilities, base=answer.base_probabilities
)
