"""Objects that do something when a bundle file holding them is loaded, as an attacker's file would."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path


class WritesOnUnpickle:
    """Unpickling it creates ``path``: ``open(path, "w")`` runs inside ``pickle.load``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


class WritesOnSetState:
    """A plain object whose state, once restored, creates ``path`` (how skops would rebuild an untrusted type)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __setstate__(self, state: dict) -> None:
        Path(state["path"]).write_text("ran")
        self.__dict__.update(state)


def pickled(path: Path) -> bytes:
    return pickle.dumps(WritesOnUnpickle(path))
