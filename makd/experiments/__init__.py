"""Experiments: distillation runs, grids, statistics, reports, published numbers, run records."""
