"""The upload page in a real headless Chromium: pick a file, see the label, the probabilities, the votes."""

from __future__ import annotations

import httpx

from tests.conftest import needs_chromium

pytestmark = needs_chromium


def test_upload_shows_the_stacked_answer(server, browser, digits_dir):
    image = sorted((digits_dir / "test").glob("*.png"))[0]
    api = httpx.post(
        f"{server.url}/v1/predict", files=[("files", (image.name, image.read_bytes(), "image/png"))], timeout=60
    ).json()["predictions"][0]
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/")
    page.wait_for_function("document.getElementById('model').textContent.includes('stacked by')")
    assert "tiny_cnn" in page.inner_text("#model")
    page.set_input_files("#file", str(image))
    page.click("button[type=submit]")
    page.wait_for_selector(".label")
    assert page.inner_text(".label") == api["label"]
    rows = page.locator("table tr")
    assert rows.count() == 1 + 10  # header and one row per class
    assert page.locator("table th").all_inner_texts() == ["class", "stack", "tiny_cnn", "mini_mobilenet"]
    assert "tiny_cnn →" in page.inner_text("#result") and "mini_mobilenet →" in page.inner_text("#result")
    assert not errors
    page.close()


def test_bad_upload_shows_the_error(server, browser, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not really a png")
    page = browser.new_page()
    page.goto(f"{server.url}/")
    page.set_input_files("#file", str(bad))
    page.click("button[type=submit]")
    page.wait_for_selector(".error")
    assert "broken.png: not a readable image" in page.inner_text(".error")
    page.close()
