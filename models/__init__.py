"""Base CNNs: an architecture registry (``models.registry``) whose models take raw RGB pixels 0..255.

Knows nothing of stacking or HTTP. Imports nothing here, so ``models.choices`` stays light: the service and
``stacking --help`` read it without loading Keras or TensorFlow.
"""

import os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) drowns the CLI output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
