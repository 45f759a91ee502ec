"""Pictures a practitioner checks: training curves and an augmentation preview grid.

matplotlib with the Agg backend: no display needed, PNG files out.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_tta_heatmap(predicted: list[list[int]], labels: list[int], classes: list[str], path: Path,
                     view_names: list[str]) -> Path:
    """Predicted class per view (rows) and image (columns); the bottom row is the true class."""
    grid = np.array([*predicted, labels])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * grid.shape[1] + 2), 0.35 * grid.shape[0] + 1.6),
                           constrained_layout=True)
    image = ax.imshow(grid, aspect="auto", cmap="tab20" if len(classes) > 10 else "tab10",
                      vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
    ax.set_yticks(range(len(grid)), [*view_names, "true class"], fontsize=7)
    ax.set_xlabel("image")
    ax.axhline(len(predicted) - 0.5, color="white", linewidth=2)
    bar = fig.colorbar(image, ax=ax, ticks=range(len(classes)))
    bar.ax.set_yticklabels(classes, fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
