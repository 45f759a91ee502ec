"""The report page's numbers come from the bundle."""

from __future__ import annotations

import re

import numpy as np

from stacking.bundle import load_manifest, load_oof
from stacking.report import write_report


def table_after(page: str, heading: str) -> list[list[str]]:
    """The cells of the first table after ``<h2>heading</h2>``."""
    section = page.split(f"<h2>{heading}</h2>", 1)[1]
    table = section[: section.index("</table>")]
    return [re.findall(r"<t[dh]>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]


def test_data_section_counts_every_class_and_the_held_out_part(bundle_copy):
    page = write_report(bundle_copy).read_text()
    manifest, oof = load_manifest(bundle_copy), load_oof(bundle_copy)
    header, *rows = table_after(page, "Data")
    assert header == ["class", "images", "held out"]
    held_out = np.bincount(oof["labels"], minlength=10)
    for i, (name, images, predicted) in enumerate(rows[:-1]):
        assert name == manifest["classes"][i]
        assert int(images) == manifest["data"]["per_class"][name] and int(predicted) == held_out[i]
    assert rows[-1] == ["all", str(manifest["data"]["images"]), str(manifest["metrics"]["oof_rows"])]
