"""Every kind of bad (or merely unusual) upload against a real server: the right status, and the server lives on.

Documented behaviour: a request whose files are all unusable fails with the first
file's error; a bad file beside good ones gets its own ``error`` entry and the good
ones are answered. Unusual but valid images (16-bit, CMYK, animated, 1x1) are answered.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.test_service import assert_error, png_bytes, post


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def noise(size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))


JPEG = encoded(noise(64), "JPEG")
BAD = {
    "empty": (b"", "image/png", 400, "empty file"),
    "text-named-png": (b"just some words, not pixels", "image/png", 400, "not a readable image"),
    "truncated-jpeg": (JPEG[: len(JPEG) // 2], "image/jpeg", 400, "truncated"),
    "png-bomb": (encoded(Image.new("1", (20_000, 20_000)), "PNG"), "image/png", 400, "exceeds the limit of"),
}
FINE = {
    "16-bit-png": encoded(Image.fromarray((np.arange(1024).reshape(32, 32) * 64).astype(np.uint16)), "PNG"),
    "cmyk-jpeg": encoded(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG"),
    "animated-gif": encoded(
        Image.new("P", (20, 20), 1), "GIF", save_all=True, append_images=[Image.new("P", (20, 20), k) for k in (2, 3)]
    ),
    "1x1": encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
}


def good_answer_is_still_right(server, reference: dict) -> None:
    again = post(server, [("files", ("again.png", png_bytes(90), "image/png"))]).json()["predictions"][0]
    np.testing.assert_allclose(
        list(again["probabilities"].values()), list(reference["probabilities"].values()), atol=1e-6
    )


@pytest.fixture(scope="module")
def reference(server) -> dict:
    return post(server, [("files", ("ref.png", png_bytes(90), "image/png"))]).json()["predictions"][0]


@pytest.mark.parametrize("name", BAD)
def test_bad_file_gets_a_400_naming_it_and_spoils_nothing(server, reference, name):
    data, content_type, status, text = BAD[name]
    assert_error(post(server, [("files", (f"{name}.bin", data, content_type))]), status, f"{name}.bin: ")
    assert text in post(server, [("files", (f"{name}.bin", data, content_type))]).json()["error"]["message"]
    # Beside a good file: the good one is answered, the bad one gets its error entry.
    both = post(server, [("files", ("good.png", png_bytes(90), "image/png")), ("files", (name, data, content_type))])
    assert both.status_code == 200
    good, bad = both.json()["predictions"]
    assert good["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-6)
    assert bad["error"]["code"] == "bad_request" and text in bad["error"]["message"]
    good_answer_is_still_right(server, reference)


@pytest.mark.parametrize("name", FINE)
def test_unusual_but_valid_images_are_answered(server, name):
    response = post(server, [("files", (name, FINE[name], "application/octet-stream"))])
    assert response.status_code == 200, response.text
    assert sum(response.json()["predictions"][0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_huge_bodies_are_refused_with_or_without_a_length(server, reference):
    huge = b"\0" * 1_000_000
    assert_error(post(server, [("files", ("huge.png", huge, "image/png"))]), 413, "exceeds the limit")

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        boundary = b'--x\r\nContent-Disposition: form-data; name="files"; filename="h.png"\r\n\r\n'
        yield boundary
        for _ in range(20):
            yield b"\0" * 50_000
        yield b"\r\n--x--\r\n"

    response = httpx.post(
        f"{server.url}/v1/predict",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
        timeout=60,
    )
    assert_error(response, 413, "exceeds the limit")
    good_answer_is_still_right(server, reference)


@pytest.mark.parametrize(
    "params, files, status, text",
    [
        ({}, [("images", ("a.png", png_bytes(), "image/png"))], 422, "files"),
        ({"tta": -1}, None, 422, "tta"),
        ({"tta": 10**6}, None, 422, "at most 5"),
        ({"tta": "many"}, None, 422, "tta"),
        ({"details": "perhaps"}, None, 422, "details"),
    ],
    ids=["wrong-field", "tta-negative", "tta-huge", "tta-text", "details-text"],
)
def test_bad_parameters_get_422_naming_them(server, reference, params, files, status, text):
    files = files or [("files", ("a.png", png_bytes(), "image/png"))]
    assert_error(post(server, files, **params), status, text)
    good_answer_is_still_right(server, reference)
