"""Pictures a practitioner checks: training curves, augmentation and TTA, errors, calibration, diversity.

matplotlib with the Agg backend: no display needed, PNG files out.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_history(history: dict, path: Path, title: str) -> Path:
    """Accuracy and loss, train and validation, per epoch; the best epoch and each LR drop marked."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, history[metric], label=f"train {metric}", color="tab:blue")
        ax.plot(epochs, history[f"val_{metric}"], label=f"validation {metric}", color="tab:orange")
        ax.axvline(history["best_epoch"] + 1, color="tab:green", linestyle="--", label="best epoch (kept)")
        rates = history.get("learning_rate", [])
        for i in range(1, len(rates)):
            if rates[i] < rates[i - 1]:
                ax.axvline(i + 1, color="tab:red", linestyle=":", label="learning-rate drop")
        phases = history.get("phase", [])
        if 2 in phases:
            ax.axvspan(phases.index(2) + 0.5, len(phases) + 0.5, color="0.92", label="fine-tuning phase", zorder=0)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one legend entry per kind of mark
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_study_curves(histories: dict[str, dict], path: Path) -> Path:
    """Each strategy's validation accuracy and loss per epoch, on shared axes (one line each, its best epoch
    ringed), so strategies read side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for k, (name, history) in enumerate(histories.items()):
        epochs = np.arange(1, len(history["loss"]) + 1)
        best = history["best_epoch"]
        for ax, metric in zip(axes, ("val_accuracy", "val_loss")):
            ax.plot(epochs, history[metric], color=colours(k % 10), label=name, linestyle="-" if k < 10 else "--")
            ax.plot(best + 1, history[metric][best], "o", color=colours(k % 10), fillstyle="none", markersize=9)
    for ax, title in zip(axes, ("validation accuracy", "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def augmentation_grid(originals: np.ndarray, augmented: np.ndarray, path: Path, titles: list[str]) -> Path:
    """Each row: an original (left) then its augmented copies; ``augmented`` is (copies, N, H, W, 3)."""
    copies, n = augmented.shape[:2]
    fig, axes = plt.subplots(n, copies + 1, figsize=(1.6 * (copies + 1), 1.6 * n), squeeze=False)
    for row in range(n):
        cells = [originals[row], *augmented[:, row]]
        for col, image in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(np.clip(image, 0, 255).astype(np.uint8), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("original" if col == 0 else f"augmented {col}", fontsize=8)
        axes[row, 0].set_ylabel(titles[row], fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_tta_curve(accuracy_by_views: dict[str, list[float]], path: Path, served_views: int) -> Path:
    """Accuracy against the number of TTA views, one line per model and the ensemble."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    for name, accuracies in accuracy_by_views.items():
        style = {"linewidth": 2.5, "color": "black"} if name == "ensemble" else {}
        ax.plot(np.arange(1, len(accuracies) + 1), accuracies, marker="o", label=name, **style)
    ax.axvline(served_views, color="0.5", linestyle="--", label="served views")
    ax.set_xlabel("TTA views (identity first)")
    ax.set_ylabel("accuracy on out-of-fold images")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_tta_heatmap(
    predicted: list[list[int]], labels: list[int], classes: list[str], path: Path, view_names: list[str]
) -> Path:
    """Predicted class per view (rows) and image (columns); the bottom row is the true class."""
    grid = np.array([*predicted, labels])
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.18 * grid.shape[1] + 2), 0.35 * grid.shape[0] + 1.6), constrained_layout=True
    )
    image = ax.imshow(
        grid,
        aspect="auto",
        cmap="tab20" if len(classes) > 10 else "tab10",
        vmin=-0.5,
        vmax=len(classes) - 0.5,
        interpolation="nearest",
    )
    ax.set_yticks(range(len(grid)), [*view_names, "true class"], fontsize=7)
    ax.set_xlabel("image")
    ax.axhline(len(predicted) - 0.5, color="white", linewidth=2)
    bar = fig.colorbar(image, ax=ax, ticks=range(len(classes)))
    bar.ax.set_yticklabels(classes, fontsize=7)
    return _save(fig, path)


def _annotate(ax, values: np.ndarray, text: list[list[str]], dark: np.ndarray) -> None:
    """Write ``text`` in each cell of a heat map, white where the cell is dark."""
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7, color="white" if dark[i, j] else "black")


def plot_confusion(counts: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """Counts of true (rows) against predicted (columns) class; colour is the share of the true class."""
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side), constrained_layout=True)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        _annotate(ax, counts, [[str(int(v)) if v else "" for v in row] for row in counts], share > 0.6)
    ax.set_xticks(range(len(classes)), classes, fontsize=7, rotation=90 if len(classes) > 12 else 0)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="share of the true class")
    return _save(fig, path)


def plot_reliability(curves: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """Accuracy against confidence per bin (from ``calibration.reliability_bins``), one line per model."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=(3, 1), sharex=True, constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
    for name, bins in curves.items():
        (line,) = ax.plot(bins["confidence"], bins["accuracy"], marker="o", label=name)
        hist.bar(bins["confidence"], bins["share"], width=0.02, alpha=0.6, color=line.get_color())
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    hist.set_xlabel("confidence (top-class probability)")
    hist.set_ylabel("share of images")
    hist.set_xlim(0, 1.02)
    return _save(fig, path)


def plot_correlation(names: list[str], corr: np.ndarray, path: Path) -> Path:
    """The base models' pairwise correlation of OOF probabilities, as an annotated heat map."""
    side = max(3.5, 0.8 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side), constrained_layout=True)
    image = ax.imshow(corr, cmap="viridis", vmin=min(0.0, float(corr.min())), vmax=1)
    _annotate(ax, corr, [[f"{v:.3f}" for v in row] for row in corr], corr < 0.6)
    ax.set_xticks(range(len(names)), names, fontsize=8, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("correlation of OOF probabilities", fontsize=9)
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def plot_weights(weights: dict[str, list[float]], base_names: list[str], chosen: str, path: Path) -> Path:
    """How much each candidate relies on each base model: grouped bars, the chosen candidate in bold."""
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.9 * len(weights) * len(base_names) * 0.4 + 3), 3.8), constrained_layout=True
    )
    width = 0.8 / len(base_names)
    x = np.arange(len(weights))
    for m, name in enumerate(base_names):
        ax.bar(x + (m - (len(base_names) - 1) / 2) * width, [w[m] for w in weights.values()], width, label=name)
    ax.set_xticks(x, list(weights), fontsize=8)
    for label in ax.get_xticklabels():
        if label.get_text() == chosen:
            label.set_fontweight("bold")
    ax.set_ylabel("share of reliance")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, title="base model", title_fontsize=7)
    return _save(fig, path)


def image_grid(images: list[np.ndarray], captions: list[str], path: Path, columns: int = 4) -> Path:
    """Images in a grid, each with a caption under it."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.6 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    return _save(fig, path)


def plot_frontier(rows: list[dict], fronts: dict[str, list[bool]], path: Path) -> Path:
    """Accuracy and log-loss against ms per image (log scale) for every option; in each panel its own front
    (``fronts["accuracy"]``, ``fronts["log_loss"]``) ringed and joined."""
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ms = np.array([r["ms_per_image"] for r in rows])
    colours = {"base": "tab:blue", "candidate": "tab:gray", "chosen": "tab:green", "serving": "tab:red"}
    for ax, metric in zip(axes, ("accuracy", "log_loss")):
        values, front = np.array([r[metric] for r in rows]), fronts[metric]
        for r, x, y, on in zip(rows, ms, values, front):
            ax.scatter(
                x,
                y,
                s=60 if on else 30,
                color=colours.get(r["kind"], "black"),
                edgecolors="black" if on else "none",
                zorder=3,
            )
            ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        order = [i for i in np.argsort(ms) if front[i]]
        ax.plot(
            ms[order],
            values[order],
            color="black",
            linewidth=1,
            linestyle="--",
            label="the front: none cheaper and better",
        )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ms per image (log scale)")
        ax.set_ylabel(metric.replace("_", "-"))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    return _save(fig, path)
