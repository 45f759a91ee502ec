"""The report page: every section, real pictures, the bundle's own numbers, and a clean load in Chromium."""

from __future__ import annotations

import html
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from stacking.bundle import load_manifest, load_meta_oof, load_oof
from stacking.meta.learners import score
from stacking.reporting.report import SECTIONS, write_report
from stacking.training.fit import chance_warnings
from tests.conftest import needs_chromium


def table_after(page: str, heading: str) -> list[list[str]]:
    """The cells of the first table after the heading whose text is ``heading``."""
    section = re.split(rf"<h[23][^>]*>{re.escape(heading)}</h[23]>", page, maxsplit=1)[1]
    table = section[: section.index("</table>")]
    return [
        [html.unescape(c) for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)
    ]


def section(page: str, key: str) -> str:
    return page.split(f"<section id={key}>", 1)[1].split("</section>", 1)[0]


def pictures(page: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", page)


def test_every_section_is_there_and_every_picture_is_drawn(bundle_copy):
    page = write_report(bundle_copy, load_manifest(bundle_copy)).read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == [f"{n}. {title}" for n, title in enumerate(SECTIONS.values(), 1)]
    expected = {
        "tta_curve.png",
        "tta_heatmap.png",
        "curves_tiny_cnn.png",
        "curves_mini_mobilenet.png",
        "augmentation.png",
        "confusion.png",
        "reliability.png",
        "diversity.png",
        "weights.png",
        "mistakes.png",
        "cost.png",
    }
    assert set(pictures(page)) == expected
    for file in expected:
        with Image.open(bundle_copy / "report" / file) as image:
            gray = np.asarray(image.convert("L"), dtype=float)
        assert image.size[0] >= 300 and image.size[1] >= 200, file
        assert gray.std() > 10, f"{file} is blank"
    gaps = re.findall(r"<p class=missing>(.*?)</p>", page)  # only the test set is missing: none was evaluated
    assert len(gaps) == 1 and gaps[0].startswith("No labelled test set evaluated yet")
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline, no script


def test_leaderboard_shows_the_bundles_scores_which_are_honest(bundle_copy):
    page = write_report(bundle_copy, load_manifest(bundle_copy)).read_text()
    manifest, oof, stack = load_manifest(bundle_copy), load_oof(bundle_copy), load_meta_oof(bundle_copy)
    rows = [r.model_dump() for r in manifest.meta_learner.oof_scores]
    header, *cells = table_after(page, f"Out-of-fold ({manifest.metrics.oof_rows} images no base model trained on)")
    assert header == ["model", "kind", "accuracy", "95% interval", "log-loss", "ECE"]
    assert cells == [
        [
            r["name"],
            r["kind"],
            f"{r['accuracy']:.4f}",
            f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
            f"{r['log_loss']:.4f}",
            f"{r['ece']:.4f}",
        ]
        for r in rows
    ]
    # The bundle's numbers are those of its saved answers: base models' OOF rows, candidates' meta-fold answers.
    by_name = {r["name"]: r for r in rows}
    labels = oof["labels"]
    for m, name in enumerate(oof["models"]):
        assert by_name[str(name)]["log_loss"] == pytest.approx(manifest.metrics.oof[str(name)].log_loss)
        assert by_name[str(name)]["accuracy"] == pytest.approx(score(oof["probabilities"][m], labels)["accuracy"])
    for name, probs in zip(stack["names"], stack["probabilities"]):
        assert by_name[str(name)]["log_loss"] == pytest.approx(score(probs, labels)["log_loss"])
    chosen = manifest.meta_learner.kind
    np.testing.assert_array_equal(stack["chosen"], stack["probabilities"][list(stack["names"]).index(chosen)])
    assert rows[-1] == {**by_name[chosen], "name": f"stack ({chosen})", "kind": "chosen"}
    # Cross-validated, not in-sample: the fitted stack scores better on rows it was fitted on.
    from stacking.bundle import load_meta
    from stacking.meta.learners import meta_features

    in_sample = score(load_meta(bundle_copy, manifest).predict_proba(meta_features(oof["probabilities"])), labels)[
        "log_loss"
    ]
    assert rows[-1]["log_loss"] > in_sample
    # The summary's headline repeats them.
    summary = table_after(page, "1. Summary")  # the first table: base models
    assert [row[-2] for row in summary[1:]] == [f"{manifest.metrics.oof[n].accuracy:.4f}" for n in oof["models"]]
    assert f"chosen stack: stack ({chosen})" in section(page, "summary")


def test_data_section_counts_every_class_and_the_held_out_part(bundle_copy):
    page = write_report(bundle_copy, load_manifest(bundle_copy)).read_text()
    manifest, oof = load_manifest(bundle_copy), load_oof(bundle_copy)
    header, *rows = table_after(page, "Data")
    assert header == ["class", "images", "held out"]
    held_out = np.bincount(oof["labels"], minlength=10)
    for i, (name, images, predicted) in enumerate(rows[:-1]):
        assert name == manifest.classes[i]
        assert int(images) == manifest.data.per_class[name] and int(predicted) == held_out[i]
    assert rows[-1] == ["all", str(manifest.data.images), str(manifest.metrics.oof_rows)]


def test_mistakes_are_the_stacks_surest_wrong_answers(bundle_copy):
    page = write_report(bundle_copy, load_manifest(bundle_copy)).read_text()
    manifest, oof, stack = load_manifest(bundle_copy), load_oof(bundle_copy), load_meta_oof(bundle_copy)
    predicted, confidence = stack["chosen"].argmax(axis=1), stack["chosen"].max(axis=1)
    wrong = np.flatnonzero(predicted != oof["labels"])
    surest = wrong[np.argsort(-confidence[wrong], kind="stable")][:16]
    header, *rows = table_after(page, "8. Most confident mistakes")
    assert header == ["image", "true class", "predicted", "confidence"]
    classes = manifest.classes
    assert rows == [
        [str(oof["ids"][i]), classes[oof["labels"][i]], classes[predicted[i]], f"{confidence[i]:.4f}"] for i in surest
    ]
    assert f"{len(wrong)} of {len(oof['labels'])} OOF images are wrong" in page


def test_missing_data_is_said_not_fatal(bundle_copy, tmp_path):
    manifest = load_manifest(bundle_copy)
    moved = manifest.model_copy(update={"data": manifest.data.model_copy(update={"source": str(tmp_path / "gone")})})
    shutil.rmtree(bundle_copy / "report")
    page = write_report(bundle_copy, moved).read_text()  # the training folder was moved away
    assert "training images are no longer at" in section(page, "augmentation")
    assert "training images are no longer at" in section(page, "mistakes")
    assert "No labelled test set evaluated yet" in section(page, "leaderboard")
    assert "augmentation.png" not in pictures(page) and "mistakes.png" not in pictures(page)
    config = {
        **manifest.config,
        "train": {
            **manifest.config["train"],
            "augmentation": {"flip": False, "shift": 0.0, "rotate": 0.0, "zoom": 0.0, "contrast": 0.0},
        },
    }
    page = write_report(bundle_copy, manifest.model_copy(update={"config": config})).read_text()
    assert "Training used no augmentation" in section(page, "augmentation")


def test_report_files_are_readable_by_other_users(bundle_copy, tiny_bundle):
    # Written via temporary files (private by default): a server or container running as another user must read them.
    page = write_report(bundle_copy, load_manifest(bundle_copy))
    for path in [page, tiny_bundle / "manifest.json", tiny_bundle / "meta/meta.skops"]:
        assert path.stat().st_mode & 0o044 == 0o044, path
    assert tiny_bundle.stat().st_mode & 0o055 == 0o055


@needs_chromium
def test_page_loads_every_picture_without_errors_in_chromium(bundle_copy, browser):
    page_path = write_report(bundle_copy, load_manifest(bundle_copy))
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    page.goto(page_path.as_uri(), wait_until="load")
    loaded = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
    )
    assert len(loaded) == 11 and all(ok for _, ok in loaded), loaded
    assert page.locator("h2").count() == len(SECTIONS) and not errors
    page.emulate_media(media="print")  # printed: no navigation list, figures not split
    assert page.eval_on_selector("nav", "n => getComputedStyle(n).display") == "none"
    assert page.eval_on_selector("figure", "f => getComputedStyle(f).breakInside") == "avoid"
    page.close()


def test_a_member_at_chance_is_flagged_on_the_page(bundle_copy):
    oof = load_oof(bundle_copy)
    rng = np.random.default_rng(0)
    chance = rng.dirichlet(np.ones(10), size=len(oof["labels"]))  # answers that know nothing of the labels
    answers = {"models": np.array(["good", "guess"]), "labels": oof["labels"]}
    answers["probabilities"] = np.stack([oof["probabilities"][0], chance])
    warnings = chance_warnings(answers)
    assert len(warnings) == 1 and warnings[0].startswith("base model 'guess' answers at chance on its OOF rows")
    manifest = load_manifest(bundle_copy)
    write_report(
        bundle_copy, manifest.model_copy(update={"metrics": manifest.metrics.model_copy(update={"warnings": warnings})})
    )
    page = (bundle_copy / "report" / "index.html").read_text()
    assert '<p class="warning"><b>Warning:</b> base model &#x27;guess&#x27; answers at chance' in page
