"""Stacking: data, TTA, out-of-fold protocols, meta-learners, bundle I/O, reports, CLI."""
