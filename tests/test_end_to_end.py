"""The whole path on real digits: data -> fit -> predict CSV -> served over HTTP -> same answers."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pandas as pd
import pytest

from app.cli import main
from stacking.bundle import load_manifest
from tests.conftest import Server

pytestmark = pytest.mark.slow  # fits, servers or Ray: left out by make test-fast


def test_digits_from_folder_to_served_prediction(tmp_path, capsys):
    data, bundle = tmp_path / "digits", tmp_path / "bundle"
    assert main(["data", "digits", "--out", str(data), "--limit", "300"]) == 0
    config = tmp_path / "fit.toml"
    config.write_text(
        'models = ["tiny_cnn", "small_resnet"]\nimage_size = 16\n'
        '[tta]\npolicy = "shift"\nviews = 3\nadaptive_views = 1\n[train]\nepochs = 3\n[augmentation]\nflip = false\n'
    )
    assert main(["fit", "--data", str(data), "--out", str(bundle), "--config", str(config)]) == 0
    submission, probabilities = tmp_path / "submission.csv", tmp_path / "probabilities.csv"
    assert (
        main(
            [
                "predict",
                str(bundle),
                str(data / "test"),
                "--out",
                str(submission),
                "--probabilities",
                str(probabilities),
            ]
        )
        == 0
    )
    capsys.readouterr()

    table = pd.read_csv(submission, dtype=str)
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    assert list(table.columns) == ["Id", "Category"]
    assert table["Id"].tolist() == sample["Id"].tolist()  # the sample submission's order
    truth = pd.read_csv(data / "test_labels.csv", dtype=str).set_index("Id")["Category"]
    accuracy = (table.set_index("Id")["Category"] == truth.loc[table["Id"]]).mean()
    assert accuracy > 0.5  # 10 classes: far above chance even after 3 epochs on 240 scans
    cli_probs = pd.read_csv(probabilities, dtype={"Id": str}).set_index("Id")
    manifest = load_manifest(bundle)
    adaptive = json.loads((bundle / "tta_diagnostics.json").read_text())["adaptive"]
    assert manifest.tta.adaptive_margin == adaptive["margin"]
    assert adaptive["accuracy"] >= adaptive["full_accuracy"] and 0 <= adaptive["passes_saved"] < 1

    server = Server(bundle)
    try:
        server.wait_ready()
        ids = table["Id"].tolist()[:12]
        files = [("files", (i, (data / "test" / i).read_bytes(), "image/png")) for i in ids]
        response = httpx.post(f"{server.url}/v1/predict", params={"details": "true"}, files=files, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["name"] == "bundle" and len(body["model"]["version"]) == 12
        for i, entry in zip(ids, body["predictions"]):
            assert entry["filename"] == i
            http = np.array([entry["probabilities"][c] for c in cli_probs.columns])
            np.testing.assert_allclose(http, cli_probs.loc[i].to_numpy(), atol=1e-5)
            assert entry["label"] == table.set_index("Id").loc[i, "Category"]
            assert entry["tta"]["iterations"] in (1, 3)  # adaptive: 3 views only where 1 was not enough
            assert set(entry["base_models"]) == {"tiny_cnn", "small_resnet"}
    finally:
        server.stop()


def test_demo_ends_with_a_report_showing_every_part(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--limit", "300", "--epochs", "2", "--no-serve"]) == 0
    out = capsys.readouterr().out
    page_path = workdir / "bundle" / "report" / "index.html"
    assert out.rstrip().endswith(f"report: {page_path}")
    table = out.split("every way to answer:", 1)[1]
    for option in ("stack (", "cascade ", "student "):  # a cascade and a student, each with accuracy and cost
        line = next(line for line in table.splitlines() if line.startswith(option))
        assert re.search(r"\d\.\d{4}  \[.*\]\s+\d\.\d{4}  \d\.\d{4}\s+[\d.]+\s+\d+\.\d{3}$", line), line
    assert re.search(r"^stack \(.*\) against the best member \(\w+\): [+-]\d\.\d{4} accuracy \[", table, re.M)
    assert "against the plain mean" in table and "correlation of base models' OOF probabilities" in table
    manifest = load_manifest(workdir / "bundle")
    assert len({b.architecture for b in manifest.base_models}) >= 2 and len(manifest.sizes) >= 2  # a real stack
    page = page_path.read_text()
    assert page.count("<section id=") == 9 and "class=missing" not in page  # the test split included
    assert "test accuracy" in page and "60 labelled images" in page
    assert all((page_path.parent / src).is_file() for src in re.findall(r"<img src='([^']+)'", page))
