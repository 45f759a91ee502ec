"""``stacking migrate``: rewrite a format-2 bundle (pickled meta-learners) in the current, pickle-free format.

Unpickling runs whatever code the file holds, so this is the one place that does it,
once, when the user says they trust the bundle; afterwards nothing of it is a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

from stacking import bundle as bundle_io
from stacking.bundle import BundleError, Manifest, custom_modules, sha256_file
from stacking.bundle.estimators import save_estimators
from stacking.bundle.manifest import FORMAT_VERSION, READABLE_VERSIONS, validation_message
from stacking.errors import UserError

NEW_FILES = {"file": bundle_io.META_FILE, "candidates_file": bundle_io.CANDIDATES_FILE}  # format 2 had .joblib


def migrate_bundle(bundle: Path, trust_custom_code: bool) -> Manifest:
    """Convert ``bundle`` in place from format 2; return the new manifest."""
    import joblib
    from pydantic import ValidationError

    bundle = Path(bundle)
    path = bundle / bundle_io.MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a bundle (no {bundle_io.MANIFEST})")
    raw = json.loads(path.read_text())
    if raw.get("format_version") in READABLE_VERSIONS:
        raise UserError(
            f"{bundle}: already in format {raw['format_version']}, which this version reads; nothing to migrate"
        )
    if raw.get("format_version") != 2:
        raise BundleError(f"{path}: format_version {raw.get('format_version')!r}; migrate converts format 2 only")
    if not trust_custom_code:
        raise UserError(
            f"{bundle}: migrating unpickles its meta-learner files, which runs any code they hold; "
            "add --trust-custom-code if you trust where this bundle came from"
        )
    for name, expected in raw["files"].items():  # an accident is caught before anything is unpickled
        if not (bundle / name).is_file() or sha256_file(bundle / name) != expected:
            raise BundleError(f"{bundle / name}: missing or does not match the manifest's sha256; refusing to migrate")
    meta = dict(raw["meta_learner"])
    pickles = [meta[key] for key in NEW_FILES]
    for key, new in NEW_FILES.items():
        save_estimators(bundle / new, joblib.load(bundle / meta[key]))
    meta.update(NEW_FILES)
    fields = {**raw, "format_version": 3}  # format 2's fields are format 3's; read as such, written as the current
    fields.update(meta_learner=meta, custom_modules=custom_modules([b["architecture"] for b in raw["base_models"]]))
    try:
        manifest = Manifest.model_validate(fields).model_copy(update={"format_version": FORMAT_VERSION})
    except ValidationError as exc:
        raise BundleError(f"{path}: cannot be migrated: {validation_message(exc)}") from None
    for old in pickles:
        (bundle / old).unlink()
    return bundle_io.write_manifest(bundle, manifest)
