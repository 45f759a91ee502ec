"""``BUNDLE/report/index.html``: one page that shows whether the ensemble works, and why.

Nine numbered sections (summary, leaderboard, TTA, training curves, augmentation,
errors and calibration, diversity and weights, confident mistakes, accuracy against
cost), each drawn from
files in the bundle. Pictures are PNGs beside the page (matplotlib, Agg); the page has
no script and fetches nothing, so it reads offline and prints. A section whose data
is missing says so instead of failing.

Every score comes from the bundle: the OOF leaderboard from
``manifest.meta_learner.oof_scores`` (candidates and stack scored on answers from the
meta-folds that left each row out), the test leaderboard from the last
``stacking evaluate`` (``report/evaluation.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import confusion_matrix

from models.training import Augmentation
from stacking import bundle as bundle_io
from stacking.bundle.manifest import BaseModelEntry, Manifest, ProtocolEntry
from stacking.choices import Final, Protocol
from stacking.data.datasets import read_training_set
from stacking.errors import UserError
from stacking.files import write_atomically
from stacking.inference.options import pareto_front
from stacking.inference.tta import TTAPolicy
from stacking.meta.calibration import reliability_bins
from stacking.meta.leaderboard import stack_name
from stacking.reporting.diversity import diversity
from stacking.reporting.pages import STYLE, esc, figure, missing, table
from stacking.reporting.plots import (
    image_grid,
    plot_confusion,
    plot_correlation,
    plot_frontier,
    plot_history,
    plot_reliability,
    plot_tta_curve,
    plot_tta_heatmap,
    plot_weights,
)
from stacking.reporting.preview import is_identity, preview_augmentation

SECTIONS = {
    "summary": "Summary",
    "leaderboard": "Leaderboard",
    "tta": "Test-time augmentation",
    "curves": "Training curves",
    "augmentation": "Augmentation preview",
    "errors": "Errors and calibration",
    "diversity": "Diversity and meta-learner weights",
    "mistakes": "Most confident mistakes",
    "cost": "Accuracy against cost",
}
MISTAKES_SHOWN = 16
THUMBNAIL = 256  # mistakes are drawn at most this many pixels a side


@dataclass
class _Bundle:
    """What the sections read, loaded once."""

    path: Path
    manifest: Manifest
    oof: dict[str, np.ndarray]
    meta_oof: dict[str, np.ndarray]
    evaluation: dict | None  # the last ``stacking evaluate`` of this very bundle (None: none, or of an older one)
    stale_evaluation: bool = False

    @property
    def out(self) -> Path:
        return bundle_io.report_folder(self.path)

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def base_names(self) -> list[str]:
        return [str(n) for n in self.oof["models"]]

    @property
    def oof_scores(self) -> list[dict]:
        """The OOF leaderboard as rows like an evaluation's (the tables show both alike)."""
        return [row.model_dump() for row in self.manifest.meta_learner.oof_scores]


def _score_rows(rows: list[dict]) -> tuple[list[list[str]], set[int]]:
    cells = [
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
    return cells, {i for i, r in enumerate(rows) if r["kind"] == "chosen"}


SCORE_HEADER = ["model", "kind", "accuracy", "95% interval", "log-loss", "ECE"]


def _best_base(rows: list[dict]) -> dict:
    """The base model row with the highest accuracy (ties: the lower log-loss)."""
    return max((r for r in rows if r["kind"] == "base"), key=lambda r: (r["accuracy"], -r["log_loss"]))


def _protocol_text(protocol: ProtocolEntry) -> str:
    if protocol.name == Protocol.HOLDOUT:
        text = (
            f"<b>holdout</b>: {protocol.holdout_fraction:.0%} of the images held out; the base models trained "
            "on the rest and predicted the held-out part, which the meta-learner was fitted on"
        )
    else:
        served = (
            "the K fold models, the meta-learner applied to each and the answers averaged"
            if protocol.final_models == Final.FOLD_AVERAGE
            else "one model per architecture refitted on all images"
        )
        text = (
            f"<b>kfold</b> with {protocol.folds} folds: every image predicted by models that never trained on it; "
            f"served: {served}"
        )
    if protocol.group_column:
        text += f"; images grouped by <code>{esc(protocol.group_column)}</code>, each group on one side of every split"
    return text + f"; {protocol.validation_fraction:.0%} of each training part watched for early stopping."


def _data_table(b: _Bundle) -> str:
    """Images per class: in all, and in each predicted part (the folds, or the held-out part)."""
    per_class = b.manifest.data.per_class
    parts = sorted(set(b.oof["folds"].tolist()))
    names = ["held out"] if b.manifest.protocol.name == Protocol.HOLDOUT else [f"fold {k}" for k in parts]
    counts = [np.bincount(b.oof["labels"][b.oof["folds"] == k], minlength=len(b.classes)) for k in parts]
    rows = [[name, str(per_class[name]), *[str(c[i]) for c in counts]] for i, name in enumerate(b.classes)]
    rows.append(["all", str(b.manifest.data.images), *[str(c.sum()) for c in counts]])
    skipped = b.manifest.data.skipped
    note = f"<p>{len(skipped)} unreadable image(s) left out: {esc(', '.join(skipped[:5]))}</p>" if skipped else ""
    return table(["class", "images", *names], rows) + note


def _summary(b: _Bundle) -> str:
    m = b.manifest
    metrics, meta = m.metrics, m.meta_learner
    base = table(
        [
            "base model",
            "architecture",
            "size",
            "weights",
            "preprocessing",
            "model files",
            "OOF accuracy",
            "OOF log-loss",
        ],
        [
            [
                e.name,
                e.architecture,
                f"{e.image_size} px",
                _weights_text(e),
                e.preprocessing,
                str(len(e.files)),
                f"{metrics.oof[e.name].accuracy:.4f}",
                f"{metrics.oof[e.name].log_loss:.4f}",
            ]
            for e in m.base_models
        ],
    )
    selection = meta.selection
    features = "log-probabilities" + (
        " plus each model's TTA entropy and view disagreement" if meta.features.tta_features else ""
    )
    warnings = "".join(f'<p class="warning"><b>Warning:</b> {esc(w)}</p>' for w in metrics.warnings)
    parts = [
        warnings,
        f"<p>{len(b.classes)} classes, {m.data.images} training images from <code>{esc(m.data.source)}"
        f"</code> at {' and '.join(f'{s} px' for s in m.sizes)}; TTA policy <b>{esc(m.tta.policy)}</b> with "
        f"{m.tta.views} "
        f"view(s); fitted {esc(m.created)} in {metrics.fit_seconds:.0f} s.</p>",
        f"<p>Protocol: {_protocol_text(m.protocol)}</p>",
        base,
        f"<p>Meta-learner: <b>{esc(stack_name(selection))}</b> on {features}, chosen because: "
        f"{esc(selection.reason)}.</p>",
        _headline(b),
        "<h3>Data</h3>",
        _data_table(b),
    ]
    return "\n".join(parts)


def _weights_text(entry: BaseModelEntry) -> str:
    """Where a base model's training started, with the file's sha256 when it came from one."""
    if entry.weights is None:
        return "none (from scratch)"
    return entry.weights + (f" (sha256 {entry.weights_sha256[:12]}…)" if entry.weights_sha256 else "")


def _headline(b: _Bundle) -> str:
    """The stack against the best base model and the plain mean: OOF scores, and test scores when evaluated."""
    oof_rows = b.oof_scores
    tables = [("OOF", oof_rows, f"{b.manifest.metrics.oof_rows} OOF images")]
    if b.evaluation:
        tables.append(("test", b.evaluation["rows"], f"{b.evaluation['images']} test images"))
    header, rows = ["", *[f"{t} {metric}" for t, _, _ in tables for metric in ("accuracy", "log-loss")]], []
    picks = [
        ("best base model", _best_base(oof_rows)["name"]),
        ("plain mean", "mean"),
        ("chosen stack", stack_name(b.manifest.meta_learner.selection)),
    ]
    for label, name in picks:
        cells = []
        for _, table_rows, _ in tables:
            row = _by_name(table_rows, name)
            cells += [f"{row['accuracy']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]", f"{row['log_loss']:.4f}"]
        rows.append([f"{label}: {name}", *cells])
    where = " and ".join(text for _, _, text in tables)
    note = "" if b.evaluation else " " + _no_test(b)
    return f"<p>Scores on {where}, accuracy with its bootstrap 95% interval.{esc(note)}</p>" + table(header, rows, {2})


def _no_test(b: _Bundle) -> str:
    if b.stale_evaluation:
        return (
            "The last `stacking evaluate` was of an earlier state of this bundle (its meta step was rerun since): "
            "run it again to see test scores here."
        )
    return (
        "No labelled test set evaluated yet: `stacking evaluate BUNDLE --data DIR [--labels CSV]` adds its scores here."
    )


def _by_name(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["name"] == name)


def _leaderboard(b: _Bundle) -> str:
    meta = b.manifest.meta_learner
    selection = meta.selection
    parts = [
        f"<h3>Out-of-fold ({b.manifest.metrics.oof_rows} images no base model trained on)</h3>",
        "<p>Base models as they predicted the OOF rows; each candidate and the stack scored on answers from the "
        "meta-learner folds that left the row out (fitting and scoring on the same rows would flatter them).</p>",
        table(SCORE_HEADER, *_score_rows(b.oof_scores)),
    ]
    parts.append("<h3>Test</h3>")
    if b.evaluation:
        e = b.evaluation
        labels = f" (labels {esc(e['labels'])})" if e.get("labels") else ""
        parts.append(
            f"<p>{e['images']} labelled images in <code>{esc(e['data'])}</code>{labels}, {e['views']} "
            f"TTA view(s) ({esc(e['policy'])}), evaluated {esc(e['created'])}.</p>"
        )
        parts.append(table(SCORE_HEADER, *_score_rows(e["rows"])))
    else:
        parts.append(missing(_no_test(b)))
    parts.append(f"<h3>Meta-learner selection ({selection.cv_folds}-fold cross-validation on the OOF rows)</h3>")
    parts.append(
        f"<p>Ranked by mean {esc(selection.criterion)} over the folds (± its spread); a learned stack "
        f"must beat every averaging candidate. Reliance per base model in the order "
        f"{esc(', '.join(meta.features.base_models))}.</p>"
    )
    board = selection.leaderboard
    parts.append(
        table(
            ["candidate", "family", "CV accuracy", "CV log-loss", "Brier", "ECE", "reliance per base model"],
            [
                [
                    row.name,
                    row.family,
                    f"{row.accuracy:.4f} ± {row.accuracy_std:.4f}",
                    f"{row.log_loss:.4f} ± {row.log_loss_std:.4f}",
                    f"{row.brier:.4f}",
                    f"{row.ece:.4f}",
                    " / ".join(f"{w:.2f}" for w in row.model_weights),
                ]
                for row in board
            ],
            {i for i, row in enumerate(board) if row.name == selection.kind},
        )
    )
    calibration = selection.calibration
    if calibration:
        parts.append(
            f"<p>Temperature scaling (fitted on OOF rows): T = {calibration.temperature:.3f}; cross-validated "
            f"log-loss {calibration.before.log_loss:.4f} → {calibration.after.log_loss:.4f}, "
            f"ECE {calibration.before.ece:.4f} → {calibration.after.ece:.4f}.</p>"
        )
    return "\n".join(parts)


def _tta(b: _Bundle) -> str:
    """The TTA table, fixed/broken counts, accuracy-by-views curve and per-view heat map."""
    diag = bundle_io.load_tta_diagnostics(b.path)
    columns = list(next(iter(diag["table"].values())))
    tta_table = table(
        ["model", *[f"{c} acc / log-loss" for c in columns], "fixed", "broken"],
        [
            [
                name,
                *[f"{row[c]['accuracy']:.4f} / {row[c]['log_loss']:.4f}" for c in columns],
                str(diag["fixed_broken"][name]["fixed"]),
                str(diag["fixed_broken"][name]["broken"]),
            ]
            for name, row in diag["table"].items()
        ],
    )
    adaptive = diag.get("adaptive")
    parts = [
        f"<p>Adaptive TTA: {adaptive['first_views']} views first, all {adaptive['served_views']} for images whose "
        f"views disagree or whose margin is below {adaptive['margin']}: {adaptive['share_extra']:.1%} of images got "
        f"extra views, {adaptive['passes_saved']:.1%} of view passes saved, accuracy {adaptive['accuracy']:.4f} "
        f"against {adaptive['full_accuracy']:.4f} with full TTA.</p>"
        if adaptive
        else "<p>Adaptive TTA is off.</p>",
        f"<p>Measured on {diag['rows']} out-of-fold images. Fixed: wrong with the identity view alone, right "
        f"with the served {diag['served_views']} views; broken: the reverse.</p>",
        tta_table,
    ]
    if diag["views"] < 2:
        return "\n".join([*parts, missing("Only the identity view was measured: no curve or per-view map to draw.")])
    plot_tta_curve(diag["accuracy_by_views"], b.out / "tta_curve.png", diag["served_views"])
    names = [
        v.name for v in TTAPolicy.from_dict(b.manifest.tta.model_dump()).view_list(max(b.manifest.sizes), diag["views"])
    ]
    heat = diag["heatmap"]
    plot_tta_heatmap(heat["predicted"], heat["labels"], b.classes, b.out / "tta_heatmap.png", names)
    parts += [
        figure("tta_curve.png", "accuracy against the number of TTA views"),
        figure(
            "tta_heatmap.png",
            "predicted class per view and image",
            f"Ensemble's predicted class per view for {len(heat['labels'])} images, grouped by true class (bottom "
            "row); a column that changes colour is an image the views disagree on.",
        ),
    ]
    return "\n".join(parts)


def _curves(b: _Bundle) -> str:
    """One PNG per base model and fold (and refit): accuracy and loss, best epoch and LR drops marked."""
    parts = []
    for entry in b.manifest.base_models:
        folds = bundle_io.load_history(b.path, entry)
        for k, history in enumerate(folds):
            if history.get("refit"):
                suffix, tag = " refit on all images", "_refit"
            else:
                suffix, tag = ("", "") if len(folds) == 1 else (f" fold {k}", f"_fold{k}")
            file = f"curves_{entry.name}{tag}.png"
            plot_history(history, b.out / file, f"{entry.name}{suffix}")
            parts.append(
                figure(
                    file,
                    f"training curves of {entry.name}{suffix}",
                    f"{entry.name}{suffix}: best epoch {history['best_epoch'] + 1} of {len(history['loss'])} kept, "
                    f"validation accuracy {history['best']['val_accuracy']:.4f}",
                )
            )
    return "\n".join(parts)


def _training_images(b: _Bundle) -> dict[tuple[str, int], Path] | None:
    """(id, class index) -> file of the training images, if the training folder is still there."""
    try:
        images = read_training_set(Path(b.manifest.data.source))
    except UserError:
        return None
    index = {name: i for i, name in enumerate(b.classes)}
    return {(p.name, index.get(images.classes[label], -1)): p for p, label in zip(images.paths, images.labels)}


def _augmentation(b: _Bundle) -> str:
    cfg = b.manifest.config
    augmentation = Augmentation(**cfg["train"]["augmentation"])
    settings = ", ".join(f"{k} {v}" for k, v in cfg["train"]["augmentation"].items())
    if is_identity(augmentation):
        return f"<p>Training used no augmentation ({esc(settings)}).</p>"
    file, source = "augmentation.png", Path(b.manifest.data.source)
    try:
        preview_augmentation(
            source, b.out / file, augmentation, max(b.manifest.sizes), cfg["seed"], count=min(8, len(b.classes))
        )
    except UserError:
        if not (b.out / file).is_file():
            return missing(f"The training images are no longer at {source}: no augmentation preview.")
    return figure(
        file,
        "training images and augmented copies",
        f"Left: a training image at {max(b.manifest.sizes)} px; right: copies as training saw them "
        f"({settings}). A copy that no longer shows its class means the augmentation is too strong.",
    )


def _errors(b: _Bundle) -> str:
    labels, chosen = b.oof["labels"], b.meta_oof["chosen"]
    name = stack_name(b.manifest.meta_learner.selection)
    counts = confusion_matrix(labels, chosen.argmax(axis=1), labels=np.arange(len(b.classes)))
    plot_confusion(counts, b.classes, b.out / "confusion.png", f"{name} on {len(labels)} OOF images")
    best = _best_base(b.oof_scores)["name"]
    curves = {
        f"best base model ({best})": reliability_bins(b.oof["probabilities"][b.base_names.index(best)], labels),
        name: reliability_bins(chosen, labels),
    }
    plot_reliability(curves, b.out / "reliability.png")
    return "\n".join(
        [
            figure(
                "confusion.png",
                "confusion matrix of the chosen stack",
                f"{name}, cross-validated answers on the OOF rows: counts of true (rows) against predicted class; "
                f"{int(np.trace(counts))} of {len(labels)} right.",
            ),
            figure(
                "reliability.png",
                "reliability diagram",
                "Accuracy against confidence in equal-width confidence bins; on the diagonal a model is as sure as it "
                "is right. Below: how many images fall in each bin.",
            ),
        ]
    )


def _diversity(b: _Bundle) -> str:
    selection, names = b.manifest.meta_learner.selection, b.base_names
    parts = []
    if len(names) < 2:
        parts.append(missing("One base model: no diversity to show."))
    else:
        _, corr = diversity(b.path)
        plot_correlation(names, corr, b.out / "diversity.png")
        predicted = b.oof["probabilities"].argmax(axis=2)
        wrong = predicted != b.oof["labels"]
        pairs = [
            [
                f"{names[i]} / {names[j]}",
                f"{corr[i, j]:.4f}",
                f"{(predicted[i] != predicted[j]).mean():.4f}",
                f"{(wrong[i] & wrong[j]).mean():.4f}",
            ]
            for i in range(len(names))
            for j in range(i + 1, len(names))
        ]
        parts += [
            figure(
                "diversity.png",
                "correlation of base models' OOF probabilities",
                "Lower correlation means more for the ensemble to gain.",
            ),
            table(["pair", "correlation", "disagree on label", "both wrong"], pairs),
        ]
    plot_weights(
        {row.name: row.model_weights for row in selection.leaderboard},
        names,
        selection.kind,
        b.out / "weights.png",
    )
    parts.append(
        figure(
            "weights.png",
            "reliance of each candidate on each base model",
            "Averages: their weights; logistic regression: mean absolute coefficient per model; random "
            f"forest: summed feature importance per model. Chosen: {selection.kind}.",
        )
    )
    return "\n".join(parts)


def _thumbnail(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            return np.asarray(image.convert("RGB"))
    except OSError:
        return None


def _mistakes(b: _Bundle) -> str:
    labels, chosen = b.oof["labels"], b.meta_oof["chosen"]
    predicted, confidence = chosen.argmax(axis=1), chosen.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    if len(wrong) == 0:
        return f"<p>The stack got all {len(labels)} OOF images right.</p>"
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    files = _training_images(b)
    if files is None:
        return missing(
            f"{len(wrong)} OOF images are wrong, but the training images are no longer at "
            f"{b.manifest.data.source} to show them."
        )
    shown, captions, rows = [], [], []
    for i in wrong:
        image_id, label = str(b.oof["ids"][i]), int(labels[i])
        pixels = _thumbnail(files[(image_id, label)]) if (image_id, label) in files else None
        if pixels is None:
            continue
        shown.append(pixels)
        captions.append(
            f"{image_id}\ntrue {b.classes[label]}, predicted {b.classes[predicted[i]]} ({confidence[i]:.0%})"
        )
        rows.append([image_id, b.classes[label], b.classes[predicted[i]], f"{confidence[i]:.4f}"])
        if len(shown) == MISTAKES_SHOWN:
            break
    if not shown:
        return missing(f"{len(wrong)} OOF images are wrong, but none of them is readable in {b.manifest.data.source}.")
    image_grid(shown, captions, b.out / "mistakes.png")
    return "\n".join(
        [
            f"<p>{len(wrong)} of {len(labels)} OOF images are wrong (cross-validated stack answers); the "
            f"{len(shown)} it was surest about:</p>",
            figure("mistakes.png", "the stack's most confident mistakes"),
            table(["image", "true class", "predicted", "confidence"], rows),
        ]
    )


def _cost_rows(b: _Bundle) -> tuple[list[dict], str] | None:
    """Every option's scores and cost: from the last evaluation (test images) when it has costs, else the fit's."""
    if b.evaluation and all("ms_per_image" in r for r in b.evaluation["rows"]):
        return b.evaluation["rows"], f"the {b.evaluation['images']} test images of the last evaluation"
    if b.manifest.serving is None:
        return None
    rows = [o.model_dump() for o in b.manifest.serving.options if o.ms_per_image is not None]
    return rows, 'rows no option trained on (each row\'s "scored on"), costs timed when the bundle was made'


def _teaching(serving) -> str:
    """How the student was taught and what teaching cost beside its own training; empty without a record."""
    student = serving.student if serving else None
    if student is None or student.teaching is None:
        return ""
    t = student.teaching
    return (
        f" Student: {student.architecture} at {student.image_size} px, taught {t.method} on {t.pictures} pictures "
        f"({t.copies} per image); the teacher spent {t.teacher_passes} forward passes in {t.teacher_seconds:g} s, "
        f"the student's own training {t.student_seconds:g} s."
    )


def _cost(b: _Bundle) -> str:
    """Every way to answer on one chart, accuracy and log-loss against ms per image, the front marked; the table."""
    found = _cost_rows(b)
    if found is None:
        return missing("This bundle was fitted before costs were measured: refit it to see the trade.")
    rows, where = found
    ms = [r["ms_per_image"] for r in rows]
    front = pareto_front(ms, [r["accuracy"] for r in rows])
    plot_frontier(
        rows, {"accuracy": front, "log_loss": pareto_front(ms, [-r["log_loss"] for r in rows])}, b.out / "cost.png"
    )
    serving = b.manifest.serving
    stages = (
        ", ".join(
            f"{s.name} (answers when p >= {s.threshold:g})" if s.model else s.name for s in serving.cascade.stages
        )
        if serving and serving.cascade
        else "none"
    )
    options = table(
        ["option", "kind", "accuracy", "log-loss", "forward passes", "ms per image", "on the accuracy front"],
        [
            [
                r["name"],
                r["kind"],
                f"{r['accuracy']:.4f}",
                f"{r['log_loss']:.4f}",
                f"{r['cost_views']:.3g}",
                f"{r['ms_per_image']:.3f}",
                "yes" if on else "",
            ]
            for r, on in zip(rows, front)
        ],
        {i for i, on in enumerate(front) if on},
    )
    return "\n".join(
        [
            f"<p>Each way this bundle can answer, scored on {esc(where)}. Forward passes: image-views through "
            "networks per image, fold models counted. An option is on the front when none other is both as cheap "
            "and as accurate. "
            f"Serve one with <code>--serve-as</code>, or let <code>--latency-budget-ms</code> pick. Cascade stages: "
            f"{esc(stages)}.{esc(_teaching(serving))}</p>",
            figure(
                "cost.png",
                "accuracy and log-loss against milliseconds per image",
                "Accuracy (left) and log-loss (right) against ms per image, log scale; ringed and joined: the "
                "options no other beats on both cost and that score.",
            ),
            options,
        ]
    )


def write_report(bundle: Path, manifest: Manifest) -> Path:
    """Write the report page and its pictures from the bundle (``manifest``: its verified manifest); return the
    page's path."""
    bundle = Path(bundle)
    evaluation = bundle_io.load_evaluation(bundle)
    stale = evaluation is not None and evaluation.get("bundle_sha") != bundle_io.manifest_sha(bundle)
    b = _Bundle(
        bundle,
        manifest,
        bundle_io.load_oof(bundle),
        bundle_io.load_meta_oof(bundle),
        None if stale else evaluation,
        stale,
    )
    b.out.mkdir(parents=True, exist_ok=True)
    builders = {
        "summary": _summary,
        "leaderboard": _leaderboard,
        "tta": _tta,
        "curves": _curves,
        "augmentation": _augmentation,
        "errors": _errors,
        "diversity": _diversity,
        "mistakes": _mistakes,
        "cost": _cost,
    }
    body = "\n".join(
        f"<section id={key}><h2>{n}. {SECTIONS[key]}</h2>\n{builders[key](b)}\n</section>"
        for n, key in enumerate(SECTIONS, 1)
    )
    contents = "".join(f"<li><a href='#{key}'>{title}</a></li>" for key, title in SECTIONS.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>stackserve report</title><style>{STYLE}</style></head><body>
<h1>stackserve report</h1>
<nav><ol>{contents}</ol></nav>
{body}
</body></html>
"""
    path = b.out / "index.html"
    write_atomically(path, page)
    return path
