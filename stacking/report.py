"""``BUNDLE/report/index.html``: the comparison and selection tables and training curves, readable offline."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from stacking import bundle as bundle_io
from stacking.plots import plot_history, plot_tta_curve, plot_tta_heatmap
from stacking.tta import TTAPolicy


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _training_curves(bundle: Path, manifest: dict) -> str:
    """One PNG per base model and fold beside the page; the HTML that shows them."""
    parts = []
    for entry in manifest["base_models"]:
        folds = json.loads((bundle / entry["history"]).read_text())["folds"]
        for k, history in enumerate(folds):
            suffix = "" if len(folds) == 1 else f" fold {k}"
            file = f"curves_{entry['name']}{'' if len(folds) == 1 else f'_fold{k}'}.png"
            plot_history(history, bundle / "report" / file, f"{entry['name']}{suffix}")
            best = history["best_epoch"]
            parts.append(
                f"<figure><img src='{html.escape(file)}' alt='training curves of {html.escape(entry['name'])}{suffix}'>"
                f"<figcaption>{html.escape(entry['name'])}{suffix}: best epoch {best + 1} of {len(history['loss'])}, "
                f"validation accuracy {history['best']['val_accuracy']:.4f}</figcaption></figure>"
            )
    return "\n".join(parts)


def _data_section(bundle: Path, manifest: dict) -> str:
    """Images per class: in all, and in each predicted part (the folds, or the held-out part)."""
    oof = bundle_io.load_oof(bundle)
    classes, per_class = manifest["classes"], manifest["data"]["per_class"]
    parts = sorted(set(oof["folds"].tolist()))
    names = ["held out"] if manifest["protocol"]["name"] == "holdout" else [f"fold {k}" for k in parts]
    counts = [np.bincount(oof["labels"][oof["folds"] == k], minlength=len(classes)) for k in parts]
    rows = [[name, str(per_class[name]), *[str(c[i]) for c in counts]] for i, name in enumerate(classes)]
    rows.append(["all", str(manifest["data"]["images"]), *[str(c.sum()) for c in counts]])
    skipped = manifest["data"]["skipped"]
    note = f"<p>{len(skipped)} unreadable image(s) left out.</p>" if skipped else ""
    return _table(["class", "images", *names], rows) + note


def _tta_section(bundle: Path, manifest: dict) -> str:
    """The TTA table, fixed/broken counts, accuracy-by-views curve and per-view heat map."""
    path = bundle / bundle_io.TTA_DIAGNOSTICS
    if not path.is_file():
        return "<p>This bundle has no TTA diagnostics.</p>"
    diag = json.loads(path.read_text())
    columns = list(next(iter(diag["table"].values())))
    table = _table(
        ["model", *[f"{c} acc / log-loss" for c in columns], "fixed", "broken"],
        [[name, *[f"{row[c]['accuracy']:.4f} / {row[c]['log_loss']:.4f}" for c in columns],
          str(diag["fixed_broken"][name]["fixed"]), str(diag["fixed_broken"][name]["broken"])]
         for name, row in diag["table"].items()],
    )
    plot_tta_curve(diag["accuracy_by_views"], bundle / "report" / "tta_curve.png", diag["served_views"])
    policy = TTAPolicy.from_dict(manifest["tta"])
    names = [v.name for v in policy.view_list(manifest["image_size"], diag["views"])]
    heat = diag["heatmap"]
    plot_tta_heatmap(heat["predicted"], heat["labels"], manifest["classes"], bundle / "report" / "tta_heatmap.png", names)
    adaptive = diag.get("adaptive")
    adaptive_text = (
        f"<p>Adaptive TTA: {adaptive['first_views']} views first, all {adaptive['served_views']} for images whose "
        f"views disagree or whose margin is below {adaptive['margin']}: {adaptive['share_extra']:.1%} of images got "
        f"extra views, {adaptive['passes_saved']:.1%} of view passes saved, accuracy {adaptive['accuracy']:.4f} "
        f"against {adaptive['full_accuracy']:.4f} with full TTA.</p>"
        if adaptive else "<p>Adaptive TTA is off.</p>"
    )
    return adaptive_text + (
        f"<p>Measured on {diag['rows']} out-of-fold images. Fixed: wrong with the identity view alone, right "
        f"with the served {diag['served_views']} views; broken: the reverse.</p>{table}"
        "<figure><img src='tta_curve.png' alt='accuracy against the number of TTA views'></figure>"
        "<figure><img src='tta_heatmap.png' alt='predicted class per view and image'>"
        f"<figcaption>Ensemble's predicted class per view for {len(heat['labels'])} images, grouped by true "
        "class (bottom row); a column that changes colour is an image the views disagree on.</figcaption>"
        "</figure>"
    )


def write_report(bundle: Path) -> Path:
    """Write the report page from the manifest; return its path."""
    bundle = Path(bundle)
    manifest = bundle_io.load_manifest(bundle, verify=False)
    metrics, selection = manifest["metrics"], manifest["meta_learner"]["selection"]
    oof = _table(
        ["model", "accuracy", "log-loss"],
        [[name, f"{s['accuracy']:.4f}", f"{s['log_loss']:.4f}"] for name, s in metrics["oof"].items()],
    )
    meta = _table(
        ["candidate", "family", "CV accuracy", "CV log-loss", "Brier", "ECE", "weight per base model"],
        [[("▶ " if row["name"] == selection["kind"] else "") + row["name"], row["family"],
          f"{row['accuracy']:.4f} ± {row['accuracy_std']:.4f}", f"{row['log_loss']:.4f} ± {row['log_loss_std']:.4f}",
          f"{row['brier']:.4f}", f"{row['ece']:.4f}", " / ".join(f"{w:.2f}" for w in row["model_weights"])]
         for row in selection["leaderboard"]],
    )
    calibration = selection["calibration"]
    if calibration:
        meta += (f"<p>Temperature scaling (fitted on OOF rows): T = {calibration['temperature']:.3f}; cross-validated "
                 f"log-loss {calibration['before']['log_loss']:.4f} → {calibration['after']['log_loss']:.4f}, "
                 f"ECE {calibration['before']['ece']:.4f} → {calibration['after']['ece']:.4f}.</p>")
    protocol = manifest["protocol"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stackserve report</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style>
</head><body>
<h1>stackserve report</h1>
<p>{len(manifest['classes'])} classes, {manifest['data']['images']} training images, image size
{manifest['image_size']} px, protocol <b>{html.escape(protocol['name'])}</b>, TTA policy
<b>{html.escape(manifest['tta']['policy'])}</b> with {manifest['tta']['views']} view(s).</p>
<h2>Data</h2>
{_data_section(bundle, manifest)}
<h2>Out-of-fold scores ({metrics['oof_rows']} images no base model trained on)</h2>
{oof}
<h2>Meta-learner selection</h2>
<p>Chosen: <b>{html.escape(selection['kind'])}</b>: {html.escape(selection['reason'])}. Scores are the mean ± spread
over {selection['cv_folds']} cross-validation folds of the OOF rows; weights are in the order
{html.escape(', '.join(manifest['meta_learner']['features']['base_models']))}.</p>
{meta}
<h2>Test-time augmentation</h2>
{_tta_section(bundle, manifest)}
<h2>Training curves</h2>
{_training_curves(bundle, manifest)}
</body></html>
"""
    path = bundle / "report" / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
