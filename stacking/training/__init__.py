"""Fitting a stack: the fit config, jobs and where they run, protocols, export, the meta step, costing, distillation."""
