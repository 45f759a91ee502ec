"""Meta-learners and candidates on disk without pickle: ``skops.io`` with an explicit list of trusted types.

skops stores an estimator as data (a schema plus arrays) and rebuilds only types it is
told to trust, so a bundle from someone else cannot run code through these files.
Beyond skops' own defaults (scikit-learn estimators, numpy arrays, builtins) we trust
exactly the classes our meta step makes. A file naming any other type is refused,
naming the file and the type, before anything in it is built.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

# At import, skops lists the types it trusts by scanning every loaded module: 0.6 s in a fresh process, over 2 s
# once TensorFlow's thousands of modules are loaded. So the bundle module, and with it this one, is imported
# before TensorFlow wherever a bundle is loaded (``stacking.inference.predictor``).
import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException

from stacking.errors import BundleError
from stacking.files import atomic_path

# The types our meta step saves beyond skops' defaults; each is a plain estimator whose state is arrays and numbers.
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",  # the random forest's trees
    "stacking.meta.calibration.TemperatureScaled",
    "stacking.meta.learners.ServingForest",
    "stacking.meta.learners.WeightedAverage",
)
# Where files written before the stages became subpackages name our classes' modules, and where they live now.
MOVED_MODULES = {"stacking.meta": "stacking.meta.learners", "stacking.calibration": "stacking.meta.calibration"}


def _current_bytes(path: Path) -> bytes:
    """The file as skops reads it, with the module paths of ``MOVED_MODULES`` renamed in its schema (nothing else in
    the file changes: its sha256 is checked on the file as written)."""
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as old:
        schema = old.read("schema.json").decode()
        renamed = schema
        for before, now in MOVED_MODULES.items():
            renamed = renamed.replace(f'"__module__": "{before}"', f'"__module__": "{now}"')
        if renamed == schema:
            return data
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as new:
            for member in old.infolist():
                new.writestr(member, renamed if member.filename == "schema.json" else old.read(member))
    return out.getvalue()


def untrusted_types(path: Path) -> list[str]:
    """Types in ``path`` outside skops' defaults and ``TRUSTED_TYPES``; reads the schema only, builds nothing."""
    try:
        found = sio.get_untrusted_types(data=_current_bytes(path))
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not a skops file ({exc}); refusing it (a pickle is never loaded)") from None
    return [t for t in found if t not in TRUSTED_TYPES]


def check_estimator_file(path: Path) -> None:
    """Refuse a file holding a type we do not trust, naming it."""
    unknown = untrusted_types(path)
    if unknown:
        raise BundleError(f"{path}: holds type(s) outside the trusted list: {', '.join(unknown)}; refusing it")


def save_estimators(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        sio.dump(obj, tmp, compression=zipfile.ZIP_DEFLATED)


def load_estimators(path: Path):
    """The object in ``path``. ``load_manifest`` has checked its types, naming them; skops refuses any outside the
    trusted list again while it reads, so the file is not scanned twice."""
    try:
        return sio.loads(_current_bytes(path), trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise BundleError(f"{path}: holds type(s) outside the trusted list ({exc}); refusing it") from None
