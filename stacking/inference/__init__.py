"""Answering: the predictor, TTA, the options that serve, and batch prediction of a folder."""
