"""Fake evaluators: analytic score landscapes over the (normalized) merge weights, so the
optimizer can be tested in milliseconds without torch."""

from __future__ import annotations

import numpy as np

from optimizer.candidate import Candidate


class QuadraticPool:
    """score_t(p) = 1 - k * ||p - target_t||^2 with p = weights / sum(weights).

    Merging helps when the targets lie inside the simplex; ``penalty`` > 0 adds
    -penalty * (1 - sum p_i^2), which makes every mixture worse than the vertices
    (merging hurts)."""

    def __init__(self, names, targets: dict[str, list[float]], *, k=1.0, penalty=0.0, has_base=True):
        self.names = list(names)
        self.targets = {t: np.asarray(v, dtype=float) for t, v in targets.items()}
        self.k, self.penalty, self._has_base = k, penalty, has_base
        self.calls: list[Candidate] = []
        self.fail_on: set[int] = set()
        self.interrupt_on: int | None = None
        self.fidelities: list[float] = []

    @property
    def checkpoint_names(self):
        return self.names

    @property
    def has_base(self):
        return self._has_base

    @property
    def directions(self):
        return dict.fromkeys(self.targets, True)

    def point(self, c: Candidate) -> np.ndarray | None:
        w = np.array([max(c.weights.get(n, 0.0), 0.0) for n in self.names])
        return None if w.sum() == 0 else w / w.sum()

    def evaluate(self, c: Candidate, fidelity: float = 1.0) -> dict[str, float]:
        self.calls.append(c)
        self.fidelities.append(fidelity)
        if self.interrupt_on is not None and len(self.calls) == self.interrupt_on:
            raise KeyboardInterrupt
        if len(self.calls) in self.fail_on:
            raise RuntimeError("CUDA out of memory (simulated)")
        p = self.point(c)
        if p is None:  # the base model
            return dict.fromkeys(self.targets, 0.5)
        mix = 1.0 - float(np.sum(p**2))
        # Fewer documents, noisier scores: a deterministic wobble that vanishes at fidelity 1.
        wobble = (1.0 - fidelity) * 0.05 * float(np.sin(37.0 * p @ np.arange(1, len(p) + 1)))
        return {t: 1.0 - self.k * float(np.sum((p - tgt) ** 2)) - self.penalty * mix + wobble
                for t, tgt in self.targets.items()}
