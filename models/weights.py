"""Where a keras.applications backbone's training starts: ImageNet's weights, or a weights file the user brought.

``check_start`` builds the backbone with its weights before any training, so a bad start
fails in seconds, not after hours: a file that is not a Keras weights file, that still has
its classifier top, or that belongs to another architecture is refused naming the file and
what was expected (Keras itself loads a file with a top into a backbone without one
silently, matching layers by position). ``no_downloads`` turns any download Keras would
start into an error naming the file and where Keras looks for it, for machines without
the internet (Kaggle's no-internet competitions, air-gapped servers): files already in
Keras' cache (``$KERAS_HOME/models``, default ``~/.keras/models``) are used as they are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import keras

from models.registry import BACKBONE, application_name, create_model


class WeightsError(ValueError):
    """Weights that cannot start this model; the message names the file and what was expected."""


class DownloadRefused(WeightsError):
    """A download asked for while downloads are off."""


@contextmanager
def no_downloads() -> Iterator[None]:
    """Inside, a file Keras would download raises ``DownloadRefused`` naming it and where to put it.

    Keras' ``get_file`` downloads through ``urlretrieve`` only when the file is missing from its
    cache (or fails its hash there), so patching that one call leaves cached files usable.
    """
    from keras.src.utils import file_utils

    def refuse(origin: str, target: str, *_args, **_kwargs) -> None:
        present = Path(target).is_file()
        raise DownloadRefused(
            f"offline: Keras needs {Path(target).name}"
            + (" (the copy in its cache fails its hash)" if present else "")
            + f"; download {origin} on a machine with the internet and put it at {target}, or start from "
            "a weights file of your own (weights = PATH)"
        )

    with mock.patch.object(file_utils, "urlretrieve", refuse):
        yield


def _file_shapes(path: Path) -> Counter:
    """The shapes of every weight array in a Keras weights file (Keras 3 ``.weights.h5`` or legacy HDF5)."""
    import h5py

    shapes: Counter = Counter()

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Dataset) and "optimizer" not in name.split("/"):
            shapes[tuple(item.shape)] += 1

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as exc:
        raise WeightsError(f"{path}: not a Keras weights file (HDF5: {exc})") from None
    return shapes


def _example(shapes: Counter) -> str:
    return ", ".join(str(s) for s in list(shapes)[:3])


def check_file(architecture: str, backbone: keras.Model, path: Path) -> None:
    """Refuse a weights file whose arrays are not exactly the backbone's (more: it has its top; other: another
    architecture or configuration)."""
    have = _file_shapes(path)
    want = Counter(tuple(w.shape) for w in backbone.weights)
    if have == want:
        return
    extra, missing = have - want, want - have
    if not missing:
        raise WeightsError(
            f"{path}: has {sum(extra.values())} weight array(s) the {architecture} backbone without its top does "
            f"not (shapes {_example(extra)}): it was saved with its classifier top. Save the backbone alone: "
            f"keras.applications.{application_name(architecture)}(include_top=False, ...).save_weights(PATH)"
        )
    raise WeightsError(
        f"{path}: not weights of the {architecture} backbone without its top: {sum(have.values())} arrays where "
        f"{sum(want.values())} are expected, e.g. shapes {_example(missing)} missing"
        + (f" and {_example(extra)} unexpected" if extra else "")
    )


def check_start(architecture: str, image_size: int, weights: str | None, offline: bool = False) -> None:
    """Build ``architecture`` at ``image_size`` from ``weights`` ("imagenet" or a file) as a fit will: downloads
    ImageNet's file into Keras' cache now (or refuses to, ``offline``), checks a file against the backbone."""
    if weights is None:
        return
    file = None if weights == "imagenet" else Path(weights)
    if file is not None and not file.is_file():
        raise WeightsError(f"{file}: no such weights file")
    try:
        with no_downloads() if offline else nullcontext():
            model = create_model(architecture, 2, image_size, weights=None if file else weights)
    except WeightsError:
        raise
    except Exception as exc:  # a failed download (Keras raises plain Exceptions), a file failing its hash...
        raise WeightsError(
            f"could not get ImageNet weights for {architecture} ({exc}); without the internet put Keras' file in "
            "its cache ($KERAS_HOME/models, by default ~/.keras/models) or start from a weights file of your own"
        ) from None
    if file is not None:
        backbone = next(layer for layer in model.layers if layer.name == BACKBONE)
        check_file(architecture, backbone, file)
        try:
            backbone.load_weights(file)
        except Exception as exc:  # Keras' loaders raise ValueError, KeyError, OSError...
            raise WeightsError(f"{file}: does not load into {architecture} at {image_size} px ({exc})") from None
