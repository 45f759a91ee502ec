"""How alike the base models answer: the correlation of their OOF probabilities (a stack gains most from members
that differ). Read by the report and by ``stacking evaluate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stacking import bundle as bundle_io


def diversity(bundle: Path) -> tuple[list[str], np.ndarray]:
    """Base model names and the (M, M) correlation of their flattened OOF probabilities."""
    oof = bundle_io.load_oof(bundle)
    probs = oof["probabilities"]
    return [str(n) for n in oof["models"]], np.corrcoef(probs.reshape(len(probs), -1))


def format_diversity(names: list[str], corr: np.ndarray) -> str:
    width = max(len(n) for n in names)
    lines = [
        "correlation of base models' OOF probabilities (diversity: lower means more to gain)",
        " " * width + "  " + "  ".join(f"{n[:8]:>8}" for n in names),
    ]
    lines += [f"{n:<{width}}  " + "  ".join(f"{v:>8.4f}" for v in row) for n, row in zip(names, corr)]
    return "\n".join(lines)
