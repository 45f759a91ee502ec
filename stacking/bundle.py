"""The only module that reads and writes a bundle folder (layout in DESIGN.md).

``manifest.json`` lists every file with its sha256; loading checks each before use
and refuses a bundle that does not match, so a served model is exactly the one that
was validated.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from stacking.errors import UserError
from stacking.files import atomic_path, write_atomically

FORMAT_VERSION = 2  # 2: meta candidates, fold assignment and hash, TTA meta-features
MANIFEST = "manifest.json"
META_FILE = "meta.joblib"
CANDIDATES_FILE = "candidates.joblib"
FOLDS_FILE = "folds.csv"
OOF_FILE = "oof.npz"
STACK_OOF_FILE = "stack_oof.npz"  # the meta candidates' cross-validated answers on the OOF rows
TTA_DIAGNOSTICS = "tta_diagnostics.json"
REPORT = "report"  # the page and its pictures; outside the hashed files, so it can be rewritten
EVALUATION_FILE = f"{REPORT}/evaluation.json"  # the last ``stacking evaluate`` table, shown by the report


class BundleError(UserError):
    """A bundle that is missing, incomplete or altered."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_model_path(bundle: Path, name: str, fold: int | None) -> Path:
    """``base/<name>/model.keras``, or ``fold<k>.keras`` for one fold of a kfold fit."""
    return Path(bundle) / "base" / name / ("model.keras" if fold is None else f"fold{fold}.keras")


def history_path(bundle: Path, name: str) -> Path:
    return Path(bundle) / "history" / f"{name}.json"


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    write_atomically(path, json.dumps(data, indent=2) + "\n")


def save_meta(bundle: Path, meta, candidates: dict, cv_probabilities: dict[str, np.ndarray], cv_chosen: np.ndarray) -> None:
    """The chosen meta-learner, every candidate fitted on all OOF rows (for ``evaluate``), and the
    candidates' and the chosen one's cross-validated (N, C) answers on the OOF rows (for the report)."""
    for name, obj in ((META_FILE, meta), (CANDIDATES_FILE, candidates)):
        with atomic_path(Path(bundle) / name) as tmp:
            joblib.dump(obj, tmp)
    with atomic_path(Path(bundle) / STACK_OOF_FILE) as tmp:
        np.savez_compressed(
            tmp, names=np.array(list(cv_probabilities)), probabilities=np.stack(list(cv_probabilities.values())),
            chosen=cv_chosen,
        )


def load_meta(bundle: Path):
    return joblib.load(Path(bundle) / META_FILE)


def load_candidates(bundle: Path) -> dict:
    return joblib.load(Path(bundle) / CANDIDATES_FILE)


def save_folds(bundle: Path, ids: list[str], fold: np.ndarray, groups: np.ndarray | None) -> None:
    """The fold assignment of every training image (-1: trained on, never predicted), with its group."""
    table = pd.DataFrame({"Id": ids, "fold": fold})
    if groups is not None:
        table["group"] = groups
    write_atomically(Path(bundle) / FOLDS_FILE, table.to_csv(index=False))


def save_oof(bundle: Path, oof: dict[str, np.ndarray]) -> None:
    """OOF arrays: ``probabilities`` (models x images x classes), ``disagreement`` (models x images),
    ``labels``, ``ids``, ``folds`` (each row's fold), ``models``, ``fold_hashes`` (per model), and
    ``groups`` when the fit was grouped."""
    with atomic_path(Path(bundle) / OOF_FILE) as tmp:
        np.savez_compressed(tmp, **oof)


def load_oof(bundle: Path) -> dict[str, np.ndarray]:
    with np.load(Path(bundle) / OOF_FILE) as data:
        return {k: data[k] for k in data.files}


def load_stack_oof(bundle: Path) -> dict[str, np.ndarray] | None:
    """``names``, ``probabilities`` (candidates x rows x classes) and ``chosen``; None in bundles made before it."""
    path = Path(bundle) / STACK_OOF_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def save_evaluation(bundle: Path, record: dict) -> None:
    write_json(Path(bundle) / EVALUATION_FILE, record)


def load_evaluation(bundle: Path) -> dict | None:
    path = Path(bundle) / EVALUATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def library_versions() -> dict[str, str]:
    import keras
    import pandas
    import PIL
    import sklearn
    import tensorflow

    return {
        "python": platform.python_version(),
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "pillow": PIL.__version__,
    }


def write_manifest(bundle: Path, manifest: dict) -> dict:
    """Hash every file now in the bundle (but the report) into ``manifest["files"]``; write it last."""
    bundle = Path(bundle)
    files = sorted(
        p.relative_to(bundle).as_posix()
        for p in bundle.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.relative_to(bundle).parts[0] != REPORT
    )
    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": {f: sha256_file(bundle / f) for f in files}}
    write_json(bundle / MANIFEST, manifest)
    return manifest


def load_manifest(bundle: Path, verify: bool = True) -> dict:
    """Read the manifest; with ``verify``, check every listed file's sha256 first."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    if verify:
        for name, expected in manifest["files"].items():
            file = bundle / name
            if not file.is_file():
                raise BundleError(f"{file}: listed in the manifest but missing; refusing the bundle")
            if sha256_file(file) != expected:
                raise BundleError(f"{file}: sha256 does not match the manifest; the bundle was altered, refusing it")
    return manifest


def manifest_sha(bundle: Path) -> str:
    """The bundle's identity: the sha256 of its manifest, which pins every other file."""
    return sha256_file(Path(bundle) / MANIFEST)
