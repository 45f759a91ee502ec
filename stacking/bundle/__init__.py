"""The only code that knows a bundle folder's paths and file formats (layout in DESIGN.md).

Every file has a ``save_*``/``load_*`` pair here. Nothing in a bundle runs code when
loaded: meta-learners are skops files of trusted types (``estimators``), arrays are
``.npz`` read without pickle, Keras files load with ``safe_mode=True``, and a custom
architecture's module is imported only when the user trusts custom code. Loading checks
the signature (with a verify key), then the manifest's fields, then every file's sha256,
and refuses the bundle before any of it is used.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from stacking.bundle.estimators import check_estimator_file, load_estimators, save_estimators
from stacking.bundle.manifest import READABLE_VERSIONS, BaseModelEntry, Manifest, validation_message
from stacking.bundle.signing import SIGNATURE, UNSIGNED, verify_signature
from stacking.choices import AUTO
from stacking.errors import BundleError
from stacking.files import atomic_path, write_atomically

MANIFEST = "manifest.json"
META_FILE = "meta/meta.skops"
CANDIDATES_FILE = "meta/candidates.skops"
FOLDS_FILE = "folds.csv"
OOF_FILE = "oof.npz"
META_OOF_FILE = "stack_oof.npz"  # the meta candidates' cross-validated answers on the OOF rows
TTA_DIAGNOSTICS = "tta_diagnostics.json"
REPORT = "report"  # the page and its pictures; outside the hashed files, so it can be rewritten
EVALUATION_FILE = f"{REPORT}/evaluation.json"  # the last ``stacking evaluate`` table, shown by the report
MIGRATE_HINT = "convert it once with: stacking migrate BUNDLE --trust-custom-code"


@dataclass(frozen=True)
class Trust:
    """What the user trusts when loading a bundle: custom code (by saying so), and whose signature."""

    custom_code: bool = False  # --trust-custom-code / STACKSERVE_TRUST_CUSTOM_CODE=1
    verify_key: Path | None = None  # --verify-key / STACKSERVE_VERIFY_KEY: refuse bundles not signed with it


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    write_atomically(path, json.dumps(data, indent=2) + "\n")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --- base models -------------------------------------------------------------------------------------------


def save_base_model(bundle: Path, name: str, fold: int | None, source: Path) -> str:
    """Put a trained ``.keras`` file in its place, ``base/<name>/model.keras`` or ``fold<k>.keras`` for one fold of a
    kfold fit (a hard link where possible); return that place, relative to the bundle."""
    relative = f"base/{name}/" + ("model.keras" if fold is None else f"fold{fold}.keras")
    target = Path(bundle) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return relative


def custom_modules(architectures: list[str]) -> list[str]:
    """The modules that ``pkg.module:function`` architectures need imported."""
    return sorted({a.partition(":")[0] for a in architectures if ":" in a})


def check_custom_code(bundle: Path, manifest: Manifest, trust: Trust) -> None:
    if manifest.custom_modules and not trust.custom_code:
        raise BundleError(
            f"{bundle}: its base models need custom code from module(s) {', '.join(manifest.custom_modules)}, "
            "imported only when you trust it: add --trust-custom-code (STACKSERVE_TRUST_CUSTOM_CODE=1 for the service)"
        )


def save_runtime_file(bundle: Path, name: str, fold: int | None, content: bytes) -> str:
    """An exported model beside its ``.keras`` file (``model.tflite``, ``fold<k>.tflite``); return its place."""
    from stacking.runtime import SUFFIX

    relative = f"base/{name}/" + ("model" if fold is None else f"fold{fold}") + SUFFIX
    target = Path(bundle) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_bytes(content)
    return relative


def runtime_of(entry: BaseModelEntry, requested: str) -> str:
    """The runtime that runs a base model: ``tf``, the exported one, or (``auto``) the one the fit chose."""
    from stacking.runtime import EXPORTED, TF

    exported = entry.runtime is not None and bool(entry.runtime.files)
    if requested == AUTO:
        return entry.runtime.served if exported else TF
    if requested == EXPORTED and not exported:
        why = (
            f"its export was refused at fit time ({entry.runtime.refused})"
            if entry.runtime is not None
            else "it was fitted with --runtime tf or before exports existed"
        )
        raise BundleError(
            f"--runtime {requested}: base model {entry.name!r} has no {requested} file: {why}; use --runtime auto or tf"
        )
    return requested


def load_base_models(
    bundle: Path,
    manifest: Manifest,
    trust: Trust,
    runtime: str = "auto",
    threads: int | None = None,
    only: tuple[int, int] | None = None,
) -> list:
    """Each base model's runner (``stacking.runtime``): its exported files, or its Keras models loaded with
    ``safe_mode=True``. ``threads``: the exported runtime's threads (default: every core this process may use);
    ``only``: (model, fold): that one fold model alone, as the one runner."""
    from stacking.runtime import TF, KerasRunner, LiteRTRunner, has_tensorflow

    check_custom_code(bundle, manifest, trust)
    entries = manifest.base_models
    if only is not None:
        entry, fold = entries[only[0]], only[1]
        runtime_entry = entry.runtime and entry.runtime.model_copy(
            update={"files": entry.runtime.files[fold : fold + 1]}
        )
        entries = [entry.model_copy(update={"files": entry.files[fold : fold + 1], "runtime": runtime_entry})]
    runtimes = [runtime_of(entry, runtime) for entry in entries]
    on_tf = [entry.name for entry, chosen in zip(entries, runtimes) if chosen == TF]
    if on_tf and not has_tensorflow():
        raise BundleError(
            f"{bundle}: base model(s) {', '.join(on_tf)} run on TensorFlow (--runtime {runtime}), which "
            "this installation does not have (the serving-only install); serve the bundle from the full "
            "install or image, or refit it so that every model is exported (--runtime litert)"
        )
    runners = []
    for entry, chosen in zip(entries, runtimes):
        if chosen == TF:
            runners.append(KerasRunner(_load_keras(Path(bundle), entry)))
        else:
            runners.append(LiteRTRunner([(Path(bundle) / f).read_bytes() for f in entry.runtime.files], threads))
    return runners


STUDENT_FOLDER = "student"


def save_student(
    bundle: Path, source: Path, exported: bytes | None, targets: dict[str, np.ndarray]
) -> tuple[str, str | None]:
    """The student's ``.keras`` file, its export (if any) and the soft targets it learnt from; return the
    two model files' places."""
    from stacking.runtime import SUFFIX

    folder = Path(bundle) / STUDENT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / "model.keras")
    if exported is not None:
        with atomic_path(folder / f"model{SUFFIX}") as tmp:
            tmp.write_bytes(exported)
    with atomic_path(folder / "targets.npz") as tmp:
        np.savez_compressed(tmp, **targets)
    return f"{STUDENT_FOLDER}/model.keras", f"{STUDENT_FOLDER}/model{SUFFIX}" if exported is not None else None


def load_student_targets(bundle: Path) -> dict[str, np.ndarray]:
    """``ids``, ``probabilities`` and ``source`` ("oof" or "unlabelled") of every soft target the student saw."""
    return _read_npz(Path(bundle) / STUDENT_FOLDER / "targets.npz")


def load_student(bundle: Path, manifest: Manifest, runtime: str = "auto", threads: int | None = None):
    """The student's runner: its export unless ``runtime`` is tf (or it has none), else its Keras model."""
    from stacking.runtime import TF, KerasRunner, LiteRTRunner

    student = manifest.serving.student if manifest.serving else None
    if student is None:
        raise BundleError(f"{bundle}: has no student; train one with: stacking distill {bundle} --student ARCH")
    as_entry = BaseModelEntry(
        name="student",
        architecture=student.architecture,
        image_size=student.image_size,
        preprocessing="",
        weights=None,
        files=student.files,
        history=student.history,
        runtime=student.runtime,
    )
    if runtime_of(as_entry, runtime) == TF:
        return KerasRunner(_load_keras(Path(bundle), as_entry))
    return LiteRTRunner([(Path(bundle) / f).read_bytes() for f in student.runtime.files], threads)


def _load_keras(bundle: Path, entry: BaseModelEntry) -> list:
    import keras

    from models.registry import import_custom_module

    if ":" in entry.architecture:
        import_custom_module(entry.architecture)  # registers the layers its .keras files use
    return [keras.models.load_model(bundle / f, compile=False, safe_mode=True) for f in entry.files]


# --- training curves, folds, OOF arrays ---------------------------------------------------------------------


def save_history(bundle: Path, name: str, folds: list[dict]) -> str:
    """One base model's training curves, a record per fold (and refit); return the file's place."""
    relative = f"history/{name}.json"
    write_json(Path(bundle) / relative, {"model": name, "folds": folds})
    return relative


def load_history(bundle: Path, entry: BaseModelEntry) -> list[dict]:
    return json.loads((Path(bundle) / entry.history).read_text())["folds"]


def save_folds(bundle: Path, ids: list[str], fold: np.ndarray, groups: np.ndarray | None) -> None:
    """The fold assignment of every training image (-1: trained on, never predicted), with its group."""
    columns = {"Id": ids, "fold": fold, **({"group": groups} if groups is not None else {})}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(zip(*columns.values()))
    write_atomically(Path(bundle) / FOLDS_FILE, text.getvalue())


def save_oof(bundle: Path, oof: dict[str, np.ndarray]) -> None:
    """OOF arrays: ``probabilities`` (models x images x classes), ``disagreement`` (models x images),
    ``labels``, ``ids``, ``folds`` (each row's fold), ``models``, ``fold_hashes`` (per model),
    ``views`` (models x served views x images x classes, each view's answer: the cascade is tuned on them),
    ``views_used`` (per image, fewer with adaptive TTA), and ``groups`` when the fit was grouped."""
    with atomic_path(Path(bundle) / OOF_FILE) as tmp:
        np.savez_compressed(tmp, **oof)


def load_oof(bundle: Path) -> dict[str, np.ndarray]:
    return _read_npz(Path(bundle) / OOF_FILE)


def load_meta_oof(bundle: Path) -> dict[str, np.ndarray]:
    """``names``, ``probabilities`` (candidates x rows x classes) and ``chosen``: the meta step's CV answers."""
    return _read_npz(Path(bundle) / META_OOF_FILE)


# --- meta-learners ------------------------------------------------------------------------------------------


def save_meta(
    bundle: Path, meta, candidates: dict, cv_probabilities: dict[str, np.ndarray], cv_chosen: np.ndarray
) -> None:
    """The chosen meta-learner, every candidate fitted on all OOF rows (for ``evaluate``), and the
    candidates' and the chosen one's cross-validated (N, C) answers on the OOF rows (for the report)."""
    save_estimators(Path(bundle) / META_FILE, meta)
    save_estimators(Path(bundle) / CANDIDATES_FILE, candidates)
    with atomic_path(Path(bundle) / META_OOF_FILE) as tmp:
        np.savez_compressed(
            tmp,
            names=np.array(list(cv_probabilities)),
            probabilities=np.stack(list(cv_probabilities.values())),
            chosen=cv_chosen,
        )


def load_meta(bundle: Path, manifest: Manifest):
    return load_estimators(Path(bundle) / manifest.meta_learner.file)


def load_candidates(bundle: Path, manifest: Manifest) -> dict:
    return load_estimators(Path(bundle) / manifest.meta_learner.candidates_file)


# --- diagnostics and evaluations ----------------------------------------------------------------------------


def save_tta_diagnostics(bundle: Path, diagnostics: dict) -> None:
    write_json(Path(bundle) / TTA_DIAGNOSTICS, diagnostics)


def load_tta_diagnostics(bundle: Path) -> dict:
    return json.loads((Path(bundle) / TTA_DIAGNOSTICS).read_text())


def report_folder(bundle: Path) -> Path:
    return Path(bundle) / REPORT


def save_evaluation(bundle: Path, record: dict) -> None:
    write_json(Path(bundle) / EVALUATION_FILE, record)


def load_evaluation(bundle: Path) -> dict | None:
    path = Path(bundle) / EVALUATION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def library_versions() -> dict[str, str]:
    """The installed versions of what computed the bundle (read from the installs' metadata, importing nothing)."""
    return {
        "python": platform.python_version(),
        **{
            name: metadata.version(name)
            for name in ("tensorflow", "keras", "scikit-learn", "numpy", "pandas", "pillow", "ai-edge-litert")
        },
    }


# --- the manifest -------------------------------------------------------------------------------------------


def write_manifest(bundle: Path, manifest: Manifest) -> Manifest:
    """Hash every file now in the bundle (but the report and signature) into ``files``; write the manifest last.

    A signature made before no longer matches, so it is removed: sign the bundle again.
    """
    bundle = Path(bundle)
    (bundle / SIGNATURE).unlink(missing_ok=True)
    files = sorted(
        p.relative_to(bundle).as_posix()
        for p in bundle.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.relative_to(bundle).parts[0] not in UNSIGNED
    )
    manifest = manifest.model_copy(update={"files": {f: sha256_file(bundle / f) for f in files}})
    write_atomically(bundle / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _read_manifest(bundle: Path) -> dict:
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a bundle (no {MANIFEST})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version < min(READABLE_VERSIONS):
        raise BundleError(
            f"{bundle}: bundle format {version}, which stores its meta-learner as a pickle (code run "
            f"on load); this version reads formats {' and '.join(map(str, READABLE_VERSIONS))} only: {MIGRATE_HINT}"
        )
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"{path}: format_version {version!r}, expected one of {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return raw


def load_manifest(bundle: Path, trust: Trust = Trust(), verify: bool = True) -> Manifest:
    """The validated manifest. With ``verify``: the signature (with a verify key), every listed file's sha256,
    and the types in the meta-learner files, all before anything in the bundle is used."""
    bundle = Path(bundle)
    raw = _read_manifest(bundle)
    if verify and trust.verify_key is not None:
        verify_signature(bundle, trust.verify_key)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{bundle / MANIFEST}: {validation_message(exc)}") from None
    if verify:
        student = manifest.serving.student if manifest.serving else None
        named = [(entry.name, entry.files, entry.runtime) for entry in manifest.base_models]
        named += [("student", student.files, student.runtime)] if student else []
        for model, files, runtime in named:
            for name in [*files, *(runtime.files if runtime else [])]:
                if name not in manifest.files:
                    raise BundleError(
                        f"{bundle / MANIFEST}: {model!r} names {name}, which is not among the hashed "
                        "files; refusing the bundle"
                    )
        for name, expected in manifest.files.items():
            file = bundle / name
            if not file.is_file():
                raise BundleError(f"{file}: listed in the manifest but missing; refusing the bundle")
            if sha256_file(file) != expected:
                raise BundleError(f"{file}: sha256 does not match the manifest; the bundle was altered, refusing it")
        for name in (manifest.meta_learner.file, manifest.meta_learner.candidates_file):
            check_estimator_file(bundle / name)
    return manifest


def manifest_sha(bundle: Path) -> str:
    """The bundle's identity: the sha256 of its manifest, which pins every other file."""
    return sha256_file(Path(bundle) / MANIFEST)
