"""The HTTP service over a real uvicorn server: answers, limits, and bad uploads as clean 4xx."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from tests.conftest import Server, metric
from tests.waiting import wait_loaded


def png_bytes(value: int = 128, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def post(server, files, **params) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict", files=files, params=params, timeout=60)


def assert_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and text in error["message"]


def test_health_ready_and_model(server, tiny_bundle):
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["classes"] == [str(d) for d in range(10)]
    assert [b["name"] for b in info["base_models"]] == ["tiny_cnn", "mini_mobilenet"]
    assert info["tta"]["policy"] == "shift" and info["tta"]["max_views"] == 9
    assert info["meta_learner"]["kind"] in ("mean", "logreg", "rf") and info["meta_learner"]["reason"]
    assert info["bundle_sha256"].startswith(info["version"])
    assert "oof" in info["metrics"]


def test_predict_answers_each_file(server, digits_dir):
    paths = sorted((digits_dir / "test").glob("*.png"))[:3]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    body = post(server, files, tta=2).json()
    assert [e["filename"] for e in body["predictions"]] == [p.name for p in paths]
    for entry in body["predictions"]:
        probs = entry["probabilities"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert entry["label"] == max(probs, key=probs.get) and entry["confidence"] == probs[entry["label"]]
        assert entry["tta"]["iterations"] == 2 and 0 <= entry["tta"]["agreement"] <= 1
        assert "base_models" not in entry
        assert entry["served_by"] == "stack" and entry["cost_views"] == 4  # 2 models x 2 views


def test_another_tta_policy_can_be_asked_for(server):
    body = post(server, [("files", ("a.png", png_bytes(), "image/png"))], tta=2, tta_policy="flip").json()
    assert body["predictions"][0]["tta"]["iterations"] == 2
    assert_error(
        post(server, [("files", ("a.png", png_bytes(), "image/png"))], tta=3, tta_policy="flip"), 422, "at most 2"
    )
    assert_error(post(server, [("files", ("a.png", png_bytes(), "image/png"))], tta_policy="spin"), 422, "tta_policy")


def test_tta_zero_means_the_identity_view_only(server):
    body = post(server, [("files", ("a.png", png_bytes(), "image/png"))], tta=0).json()
    assert body["predictions"][0]["tta"]["iterations"] == 1


def test_bad_file_does_not_spoil_the_others(server):
    files = [
        ("files", ("good.png", png_bytes(), "image/png")),
        ("files", ("bad.png", b"\x89PNG garbage", "image/png")),
        ("files", ("notes.txt", b"hello", "text/plain")),
    ]
    response = post(server, files)
    assert response.status_code == 200
    good, bad, text = response.json()["predictions"]
    assert good["label"] is not None
    assert bad["error"]["code"] == "bad_request" and "bad.png" in bad["error"]["message"]
    assert text["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "files, params, status, text",
    [
        ([("files", ("x.png", b"not an image", "image/png"))], {}, 400, "x.png: not a readable image"),
        ([("files", ("x.txt", b"hello", "text/plain"))], {}, 415, "unsupported content type 'text/plain'"),
        ([("files", ("a.png", png_bytes(), "image/png"))], {"tta": 6}, 422, "at most 5"),
        ([("files", ("a.png", png_bytes(), "image/png"))], {"tta": -1}, 422, "tta"),
        ([("files", (f"{i}.png", png_bytes(), "image/png")) for i in range(9)], {}, 413, "limit is 8"),
        ([("files", ("big.png", png_bytes(size=1024) + b"\0" * 300_000, "image/png"))], {}, 413, "exceeds the limit"),
        ([], {}, 422, "files"),
    ],
    ids=["corrupt", "not-image", "tta-over-max", "tta-negative", "too-many-files", "body-too-large", "no-files"],
)
def test_bad_requests_get_4xx(server, files, params, status, text):
    response = post(server, files or None, **params) if files else httpx.post(f"{server.url}/v1/predict", timeout=30)
    assert_error(response, status, text)


def test_decompression_bomb_is_refused(server):
    buf = io.BytesIO()
    Image.new("L", (10_000, 5_000)).save(buf, "PNG")  # tiny file, 50 M pixels
    response = post(server, [("files", ("bomb.png", buf.getvalue(), "image/png"))])
    assert_error(response, 400, "exceeds the limit")


def test_server_survives_bad_input(server):
    post(server, [("files", ("x.png", b"junk", "image/png"))])
    response = post(server, [("files", ("a.png", png_bytes(), "image/png"))])
    assert response.status_code == 200 and server.process.poll() is None


def test_same_image_same_answer(server):
    a = post(server, [("files", ("a.png", png_bytes(77), "image/png"))]).json()["predictions"][0]
    b = post(
        server, [("files", ("b.png", png_bytes(77), "image/png")), ("files", ("c.png", png_bytes(200), "image/png"))]
    ).json()["predictions"][0]
    np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)


def test_metrics_count_requests(server):
    """The shared server already has the series from other tests: the count must grow by exactly this request."""
    before = metric(server, "stackserve_requests_total", route="/v1/predict", status="200")
    assert post(server, [("files", ("a.png", png_bytes(), "image/png"))]).status_code == 200
    assert metric(server, "stackserve_requests_total", route="/v1/predict", status="200") == before + 1


def test_page_is_served(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "/v1/predict" in page.text and 'type="file"' in page.text


def test_not_ready_before_the_bundle_is_loaded(tiny_bundle):
    client = TestClient(create_app(Settings(bundle=tiny_bundle)))  # no lifespan: nothing loaded
    assert client.get("/healthz").status_code == 200
    assert_error(client.get("/readyz"), 503, "loading the bundle")
    assert_error(client.post("/v1/predict", files=[("files", ("a.png", png_bytes(), "image/png"))]), 503, "not loaded")


@pytest.mark.slow
def test_broken_bundle_keeps_the_process_up_and_not_ready(bundle_copy):
    (bundle_copy / "meta/meta.skops").write_bytes(b"changed after the fit")
    server = Server(bundle_copy, via_uvicorn=True)
    try:
        ready = server.wait_for(lambda r: r.status_code == 503 and "failed" in r.text)
        assert "meta/meta.skops: sha256 does not match" in ready.json()["error"]["message"]
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        response = post(server, [("files", ("a.png", png_bytes(), "image/png"))])
        assert_error(response, 503, "failed to load")
    finally:
        server.stop()


@pytest.mark.slow
def test_container_style_start_serves_predictions(tiny_bundle):
    server = Server(tiny_bundle, via_uvicorn=True)
    try:
        server.wait_ready()
        assert post(server, [("files", ("a.png", png_bytes(), "image/png"))]).status_code == 200
    finally:
        server.stop()


def test_serve_hashes_each_bundle_file_once(tiny_bundle, monkeypatch):
    """``stacking serve`` checks the bundle before any port opens; the service then loads from that pre-flight."""
    import uvicorn

    import stacking.bundle as bundle_io
    from app.cli import serve_bundle

    hashed: list[str] = []
    real = bundle_io.sha256_file
    monkeypatch.setattr(bundle_io, "sha256_file", lambda path: hashed.append(str(path)) or real(path))
    served: list[int] = []

    def run_in_process(app, **_) -> None:  # in place of the real server: start the app's lifespan, wait, ask
        with TestClient(app) as client:
            wait_loaded(client.app.state.serving.state)
            served.append(
                client.post("/v1/predict", files=[("files", ("a.png", png_bytes(), "image/png"))]).status_code
            )

    monkeypatch.setattr(uvicorn, "run", run_in_process)
    serve_bundle(tiny_bundle, warm_up_views=False)
    assert served == [200]
    files = [str(tiny_bundle / f) for f in bundle_io.load_manifest(tiny_bundle, verify=False).files]
    assert sorted(h for h in hashed if h in files) == sorted(files)  # each once, not once per check
