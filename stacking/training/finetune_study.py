"""``stacking study finetune``: which way of fine-tuning one architecture works on your data, measured.

Each strategy is a ``[train]`` recipe (``scratch``: weights none) for the same architecture,
size, head and seed, trained as one job of a fit is (``run_job``) on one split: the labelled
part, whose inner validation split drives checkpoints and early stopping, and a held-out
part no strategy trains on, where each is scored (accuracy with a bootstrap interval,
log-loss). The winner, by held-out log-loss, is printed as a ``[[model]]`` table that
``stacking fit --config`` takes as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import get_spec, is_custom
from models.training import TrainConfig
from stacking import bundle as bundle_io
from stacking.choices import Weights
from stacking.data.cache import PixelCache
from stacking.data.datasets import load_pixels, read_training_set
from stacking.errors import UserError
from stacking.files import write_atomically
from stacking.inference.tta import View
from stacking.meta.leaderboard import table_row
from stacking.reporting.pages import STYLE, esc, figure, table
from stacking.reporting.plots import plot_study_curves
from stacking.training.config import FitConfig, ModelConfig
from stacking.training.fit import check_starts, job_settings
from stacking.training.jobs import Job, run_job
from stacking.training.protocols import Split, labelled_split, make_splits

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Strategy:
    """A way to fine-tune: the ``[train]`` keys it sets (given the user's recipe) and whether it starts from scratch."""

    name: str
    means: str
    train: Callable[[TrainConfig], dict[str, Any]]
    scratch: bool = False


def _sets(**keys: Any) -> Callable[[TrainConfig], dict[str, Any]]:
    return lambda _: keys


def _head_only(t: TrainConfig) -> dict[str, Any]:
    return {"fine_tune_blocks": 0, "head_epochs": t.epochs}


def _patient(t: TrainConfig) -> dict[str, Any]:
    return {"reduce_lr_patience": 2 * t.reduce_lr_patience, "early_stopping_patience": 2 * t.early_stopping_patience}


STRATEGIES = {
    s.name: s
    for s in (
        Strategy("scratch", "weights none: every layer from random weights", _sets(), scratch=True),
        Strategy(
            "scratch-builder-momentum",
            "scratch, BatchNorm keeping the builder's momentum (0.99; MobileNets 0.999): the trap",
            _sets(batchnorm_momentum="builder"),
            scratch=True,
        ),
        Strategy("head", "the backbone frozen throughout: the head alone trains", _head_only),
        Strategy("phased", "the head, then the top fine_tune_blocks blocks, BatchNorm frozen", _sets()),
        Strategy("phased-bn", "phased, BatchNorm training in the unfrozen blocks", _sets(freeze_batchnorm=False)),
        Strategy("gradual", "the head, then one more top block per phase", _sets(fine_tune_schedule="gradual")),
        Strategy("full", "every layer from the first epoch at the low rate", _sets(fine_tune_schedule="full")),
        Strategy("discriminative", "phased, the backbone at 0.1x the head's rate", _sets(backbone_lr_factor=0.1)),
        Strategy("patient", "phased, twice the patience before the rate drops and before stopping", _patient),
    )
}


def pick_strategies(names: str | None) -> list[Strategy]:
    """``--strategies a,b``: those, in the order given (default: all)."""
    if not names:
        return list(STRATEGIES.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in STRATEGIES]
    if unknown or not chosen:
        raise UserError(f"--strategies {names!r}: expected names among {', '.join(STRATEGIES)}")
    return [STRATEGIES[n] for n in dict.fromkeys(chosen)]


def strategy_member(base: ModelConfig, strategy: Strategy) -> ModelConfig:
    """The base model as ``strategy`` trains it, named after the strategy."""
    train = replace(base.train, **strategy.train(base.train))
    return replace(base, name=strategy.name, weights=Weights.NONE if strategy.scratch else base.weights, train=train)


def check_study(cfg: FitConfig, strategies: list[Strategy]) -> ModelConfig:
    """The one model studied; an error names what stops the study before any work."""
    if len(cfg.models) != 1:
        raise UserError(f"--model: the study fine-tunes one architecture; the settings name {len(cfg.models)}")
    member = cfg.models[0]
    if is_custom(member.architecture) or get_spec(member.architecture).builtin:
        raise UserError(
            f"--model {member.architecture}: the study fine-tunes a keras.applications architecture (its blocks are "
            "known); built-in and custom ones have no pretrained weights to start from"
        )
    pretrained = [s.name for s in strategies if not s.scratch]
    if member.start is None and pretrained:
        raise UserError(
            f"--weights none: {', '.join(pretrained)} fine-tune pretrained weights; give --weights imagenet or a "
            "weights file, or --strategies scratch"
        )
    return member


def study_split(labels: np.ndarray, cfg: FitConfig, per_class: int | None, classes: list[str]) -> Split:
    """The labelled part (fit + inner validation) and the held-out part every strategy is scored on."""
    if per_class is None:
        return make_splits(labels, "holdout", cfg.holdout_fraction, cfg.validation_fraction, seed=cfg.seed)[0]
    return labelled_split(labels, per_class, cfg.validation_fraction, cfg.seed, classes)


def toml_model(member: ModelConfig) -> str:
    """``member`` as a ``[[model]]`` table: its architecture, size and weights, and the ``[train]`` keys that differ
    from the defaults (``stacking fit --config`` reads it back to the same recipe)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, (int, float)) else json.dumps(str(v))

    lines = ["[[model]]", f"architecture = {value(member.architecture)}", f"image_size = {member.image_size}"]
    file = member.weights_file
    lines.append(f"weights = {value(member.weights if file is None else file.resolve())}")
    defaults = asdict(TrainConfig())
    changed = {k: v for k, v in asdict(member.train).items() if k != "augmentation" and v != defaults[k]}
    if changed:
        lines += ["[model.train]", *(f"{k} = {value(v)}" for k, v in changed.items())]
    return "\n".join(lines) + "\n"


def run_study(
    data_dir: Path,
    out: Path,
    cfg: FitConfig,
    strategies: list[Strategy],
    per_class: int | None = None,
    echo: Echo = print,
    offline: bool = False,
    cache: PixelCache | None = None,
) -> dict:
    """Train the model under each strategy on one split; write ``out/study.json`` and ``out/index.html``; return
    the study (its rows, best first by held-out log-loss)."""
    base = check_study(cfg, strategies)
    check_starts(cfg, offline, echo)
    images = read_training_set(data_dir)
    images, pixels, bad = load_pixels(images, [base.image_size], cfg.on_bad_image, cache, echo)
    for _, reason in bad:
        echo(f"skipped {reason}")
    split = study_split(images.labels, cfg, per_class, images.classes)
    held_out = images.labels[split.oof]
    echo(
        f"{base.architecture} at {base.image_size} px from {base.weights}: {len(split.fit)} images to train on, "
        f"{len(split.val)} to validate, {len(held_out)} held out; {len(strategies)} strategies"
    )
    file = base.weights_file
    sha = None if file is None else bundle_io.sha256_file(file)
    rows, curves = [], {}
    rows_at_size, n_classes, settings = pixels.at(base.image_size), len(images.classes), job_settings(cfg)
    for strategy in strategies:
        member = strategy_member(base, strategy)
        job = Job(member, cfg.seed, split, (View(),), weights_sha256=None if strategy.scratch else sha)
        result = run_job(job, rows_at_size, images.labels, n_classes, settings, offline)
        scored = table_row(strategy.name, "strategy", result.per_view[0], held_out)
        history = result.history
        rows.append(
            {
                "strategy": strategy.name,
                "accuracy": scored["accuracy"],
                "ci_low": scored["ci_low"],
                "ci_high": scored["ci_high"],
                "log_loss": scored["log_loss"],
                "best_epoch": history["best_epoch"] + 1,
                "epochs": len(history["loss"]),
                "seconds": round(result.seconds, 1),
            }
        )
        curves[strategy.name] = history
        echo(
            f"{strategy.name}: held-out accuracy {scored['accuracy']:.4f} [{scored['ci_low']:.4f}, "
            f"{scored['ci_high']:.4f}], log-loss {scored['log_loss']:.4f}, best epoch {history['best_epoch'] + 1}/"
            f"{len(history['loss'])}, {result.seconds:.0f} s"
        )
    winner = min(rows, key=lambda r: r["log_loss"])
    study = {
        "architecture": base.architecture,
        "image_size": base.image_size,
        "weights": base.weights,
        "weights_sha256": sha,
        "seed": cfg.seed,
        "images": {"train": len(split.fit), "validation": len(split.val), "held_out": len(held_out)},
        "rows": sorted(rows, key=lambda r: r["log_loss"]),
        "winner": winner["strategy"],
        "winner_toml": toml_model(replace(strategy_member(base, STRATEGIES[winner["strategy"]]), name=base.name)),
        "strategies": {s.name: s.means for s in strategies},
        "curves": curves,
    }
    write_study(Path(out), study)
    return study


def write_study(out: Path, study: dict) -> None:
    """``study.json`` and the page: the table, the curves on shared axes, the winner's table."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "study.json", json.dumps(study, indent=2) + "\n")
    plot_study_curves(study["curves"], out / "curves.png")
    header = ["strategy", "held-out accuracy [95% CI]", "log-loss", "best epoch / epochs", "seconds", "what it does"]
    rows = [
        [
            r["strategy"],
            f"{r['accuracy']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
            f"{r['log_loss']:.4f}",
            f"{r['best_epoch']} / {r['epochs']}",
            f"{r['seconds']:.0f}",
            study["strategies"][r["strategy"]],
        ]
        for r in study["rows"]
    ]
    n = study["images"]
    title = f"Fine-tuning {study['architecture']} at {study['image_size']} px"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{STYLE}</style></head><body>
<h1>{esc(title)}</h1>
<p>From {esc(study["weights"])}, seed {study["seed"]}: every strategy trained on the same {n["train"]} images
(validated on {n["validation"]}) and scored on the same {n["held_out"]} held-out images none trained on. Best
first by held-out log-loss; the interval is a bootstrap over the held-out images.</p>
{table(header, rows, {0})}
{
        figure(
            "curves.png",
            "validation accuracy and loss per epoch, one line per strategy",
            "Validation accuracy (left) and loss (right, log scale) per epoch; a ring marks the epoch kept.",
        )
    }
<h2>The winner, for <code>stacking fit --config</code></h2>
<pre>{esc(study["winner_toml"])}</pre>
</body></html>
"""
    write_atomically(out / "index.html", page)
