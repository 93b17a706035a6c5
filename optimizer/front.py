"""Pareto front and hypervolume over per-task normalized scores (all maximized).

Reference point for the hypervolume: 0 on every task, i.e. a model that scores nothing. With
normalized scores this makes the hypervolume of a single expert-level model about 1.0.

A task on which no trial scores above the reference (every score 0: a broken task, or one far
too hard for the pool) would make every box empty and the hypervolume 0 whatever the other
tasks do. It carries no information about the trade-offs, so the hypervolume is taken over the
other tasks and the front says which tasks it left out (``hypervolume_skips``)."""

from __future__ import annotations

import numpy as np

from optimizer.adapters import optuna as optuna_adapter


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
    return optuna_adapter.hypervolume(-pts, -ref)


def informative(points: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the columns (tasks) on which some point scores above the reference."""
    pts = np.asarray(points, dtype=float)
    ref = np.zeros(pts.shape[1]) if reference is None else np.asarray(reference, dtype=float)
    return np.any(pts > ref, axis=0) if len(pts) else np.ones(pts.shape[1], dtype=bool)


def front_hypervolume(points: np.ndarray, tasks: list[str]) -> tuple[float, list[str]]:
    """Hypervolume over the informative tasks of ``points`` (reference 0), and the tasks it
    skipped because no point scores above 0 on them. With every task skipped it is 0."""
    pts = np.asarray(points, dtype=float).reshape(len(points), len(tasks))
    keep = informative(pts)
    skipped = [t for t, k in zip(tasks, keep, strict=True) if not k]
    if not keep.any():
        return 0.0, skipped
    return hypervolume(pts[:, keep]), skipped
