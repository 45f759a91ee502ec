"""The meta step, shared by ``stacking fit`` and ``stacking meta``: OOF arrays in, chosen meta-learner out.

``stacking meta BUNDLE`` reruns only this step from the bundle's saved OOF arrays, so
trying another meta-learner, criterion or calibration takes seconds, not a refit of
the CNNs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stacking import bundle as bundle_io
from stacking.bundle import Trust
from stacking.bundle.manifest import Manifest, MetaFeatures, MetaLearnerEntry, Selection
from stacking.choices import CALIBRATION, META, META_CRITERION
from stacking.errors import UserError
from stacking.meta.leaderboard import leaderboard
from stacking.meta.learners import select_meta
from stacking.training.costing import describe_cascade, plan_serving

Echo = Callable[[str], None]
FEATURE_LAYOUT = (
    "log-probabilities, base models side by side: column m * n_classes + c; with tta_features, then each "
    "model's normalised entropy, then each model's TTA view disagreement"
)


@dataclass(frozen=True)
class MetaSettings:
    """The settings of the meta step (same names as in the fit config)."""

    meta: str = "auto"
    meta_criterion: str = "log_loss"
    meta_folds: int = 5
    tta_features: bool = False
    calibration: str = "none"
    seed: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MetaSettings:
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})

    def check(self) -> None:
        for choice, value in (
            (META, self.meta),
            (META_CRITERION, self.meta_criterion),
            (CALIBRATION, self.calibration),
        ):
            choice.check(value)
        if self.meta_folds < 2:
            raise UserError(f"meta_folds {self.meta_folds}: must be at least 2")


def check_fold_hashes(models: list[str], hashes: list[str], expected: str) -> None:
    """Refuse OOF arrays made under different fold assignments: their rows would not be out-of-fold together."""
    for model, got in zip(models, hashes, strict=True):
        if got != expected:
            raise UserError(
                f"OOF predictions of {model!r} come from fold assignment {got[:12]}, not {expected[:12]} like the "
                "bundle's; every base model must be cross-fitted on the same folds before stacking"
            )


def fit_meta(bundle: Path, oof: dict[str, np.ndarray], settings: MetaSettings, fold_hash: str) -> MetaLearnerEntry:
    """Select and fit the meta-learner on ``oof``, save it with every candidate; return the manifest entry."""
    settings.check()
    names = [str(n) for n in oof["models"]]
    check_fold_hashes(names, [str(h) for h in oof["fold_hashes"]], fold_hash)
    try:
        found = select_meta(
            oof["probabilities"],
            oof["labels"],
            settings.meta,
            settings.seed,
            cv=settings.meta_folds,
            criterion=settings.meta_criterion,
            disagreement=oof["disagreement"] if settings.tta_features else None,
            groups=oof.get("groups"),
            calibration=settings.calibration,
        )
    except ValueError as exc:
        raise UserError(f"meta-learner: {exc}") from None
    bundle_io.save_meta(bundle, found.meta, found.candidates, found.cv_probabilities, found.cv_chosen)
    selection = Selection.model_validate(found.record)
    return MetaLearnerEntry(
        kind=selection.kind,
        file=bundle_io.META_FILE,
        candidates_file=bundle_io.CANDIDATES_FILE,
        features=MetaFeatures(
            layout=FEATURE_LAYOUT,
            tta_features=settings.tta_features,
            base_models=names,
            n_classes=int(oof["probabilities"].shape[2]),
        ),
        selection=selection,
        # On the OOF rows: base models as they are, candidates and stack from the meta-folds that left each row out.
        oof_scores=leaderboard(
            names, oof["probabilities"], found.cv_probabilities, found.cv_chosen, selection, oof["labels"]
        ),
    )


def describe(entry: MetaLearnerEntry) -> str:
    """One line on the choice, for the log."""
    selection = entry.selection
    line = f"meta-learner: {selection.kind} ({selection.reason})"
    cal = selection.calibration
    if cal:
        line += (
            f"; temperature {cal.temperature:.3f}: CV log-loss {cal.before.log_loss:.4f} -> "
            f"{cal.after.log_loss:.4f}, ECE {cal.before.ece:.4f} -> {cal.after.ece:.4f}"
        )
    return line


def refit_meta(bundle: Path, overrides: dict[str, Any], echo: Echo = print, trust: Trust = Trust()) -> Manifest:
    """``stacking meta``: rerun the meta step of a fitted bundle with ``overrides``; return the new manifest.

    The bundle changes, so a signature it had no longer holds: it is removed, and the user told.
    """
    from stacking.reporting.report import write_report

    bundle = Path(bundle)
    manifest = bundle_io.load_manifest(bundle, trust)
    signed = (bundle / bundle_io.SIGNATURE).is_file()
    config = {**manifest.config, **{k: v for k, v in overrides.items() if v is not None}}
    entry = fit_meta(bundle, bundle_io.load_oof(bundle), MetaSettings.from_config(config), manifest.protocol.fold_hash)
    echo(describe(entry))
    manifest = manifest.model_copy(update={"config": config, "meta_learner": entry})
    if manifest.serving is not None:  # the cascade escalates to this stack now: tuned again, on the timings kept
        serving = plan_serving(bundle, manifest, manifest.serving.timing, int(config.get("seed", 0)))
        manifest = manifest.model_copy(update={"serving": serving})
        echo(describe_cascade(serving))
        if serving.student is not None:
            echo(
                "the student keeps the soft targets of the stack it was distilled from; distill again to follow "
                "this one"
            )
    manifest = bundle_io.write_manifest(bundle, manifest)
    write_report(bundle, manifest)
    if signed:
        echo(f"{bundle} changed, so its signature was removed: sign it again with stacking sign {bundle} --key KEY")
    return manifest
