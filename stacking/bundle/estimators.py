"""Meta-learners and candidates on disk without pickle: ``skops.io`` with an explicit list of trusted types.

skops stores an estimator as data (a schema plus arrays) and rebuilds only types it is
told to trust, so a bundle from someone else cannot run code through these files.
Beyond skops' own defaults (scikit-learn estimators, numpy arrays, builtins) we trust
exactly the classes our meta step makes. A file naming any other type is refused,
naming the file and the type, before anything in it is built.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

# At import, skops lists the types it trusts by scanning every loaded module: 0.6 s in a fresh process, over 2 s
# once TensorFlow's thousands of modules are loaded. So the bundle module, and with it this one, is imported
# before TensorFlow wherever a bundle is loaded (``stacking.predictor``).
import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException

from stacking.errors import BundleError
from stacking.files import atomic_path

# The types our meta step saves beyond skops' defaults; each is a plain estimator whose state is arrays and numbers.
TRUSTED_TYPES = (
    "sklearn.tree._tree.Tree",  # the random forest's trees
    "stacking.calibration.TemperatureScaled",
    "stacking.meta.ServingForest",
    "stacking.meta.WeightedAverage",
)


def untrusted_types(path: Path) -> list[str]:
    """Types in ``path`` outside skops' defaults and ``TRUSTED_TYPES``; reads the schema only, builds nothing."""
    try:
        found = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
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
        return sio.load(path, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise BundleError(f"{path}: holds type(s) outside the trusted list ({exc}); refusing it") from None
