"""Base CNNs: an architecture registry whose models take raw RGB pixels 0..255.

Knows nothing of stacking or HTTP.
"""

import os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) drowns the CLI output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from models.registry import ArchitectureSpec, create_model, get_spec, list_models

__all__ = ["ArchitectureSpec", "create_model", "get_spec", "list_models"]
