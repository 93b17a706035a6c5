"""Pareto front and hypervolume over per-task normalized scores (all maximized).

Reference point for the hypervolume: 0 on every task, i.e. a model that scores nothing. With
normalized scores this makes the hypervolume of a single expert-level model about 1.0."""

from __future__ import annotations

import numpy as np
from optuna._hypervolume import compute_hypervolume


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the points that no other point dominates (maximization)."""
    pts = np.asarray(points, dtype=float)
    n = len(pts)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        ge = np.all(pts >= pts[i], axis=1)
        gt = np.any(pts > pts[i], axis=1)
        if np.any(ge & gt):
            mask[i] = False
    return mask


def hypervolume(points: np.ndarray, reference: np.ndarray | None = None) -> float:
    pts = np.asarray(points, dtype=float)
    if len(pts) == 0:
        return 0.0
    ref = np.zeros(pts.shape[1]) if reference is None else np.asarray(reference, dtype=float)
    pts = pts[np.all(pts > ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(compute_hypervolume(-pts, -ref))
