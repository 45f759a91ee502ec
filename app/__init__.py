"""The HTTP service (FastAPI) and the full ``stacking`` command line."""
