"""Fake evaluators: analytic score landscapes over the (normalized) merge weights, so the
optimizer can be tested in milliseconds without torch."""

from __future__ import annotations

import json
import zlib

import numpy as np

from contract.merge import MergeSpec


class QuadraticPool:
    """score_t(p) = 1 - k * ||p - target_t||^2 with p = weights / sum(weights).

    Merging helps when the targets lie inside the simplex; ``penalty`` > 0 adds
    -penalty * (1 - sum p_i^2), which makes every mixture worse than the vertices
    (merging hurts)."""

    last_timings: dict[str, float] = {}  # analytic scores: no stages to time
    last_documents: dict[str, dict] = {}  # exact scores, not means over documents

    def __init__(self, names, targets: dict[str, list[float]], *, k=1.0, penalty=0.0, has_base=True):
        self.names = list(names)
        self.targets = {t: np.asarray(v, dtype=float) for t, v in targets.items()}
        self.k, self.penalty, self._has_base = k, penalty, has_base
        self.calls: list[MergeSpec] = []
        self.fail_on: set[int] = set()
        self.interrupt_on: int | None = None
        self.fidelities: list[float] = []
        self.validations: list[MergeSpec] = []

    @property
    def checkpoint_names(self):
        return self.names

    @property
    def has_base(self):
        return self._has_base

    @property
    def directions(self):
        return dict.fromkeys(self.targets, True)

    def point(self, c: MergeSpec) -> np.ndarray | None:
        w = np.array([max(c.weights.get(n, 0.0), 0.0) for n in self.names])
        return None if w.sum() == 0 else w / w.sum()

    def doc_counts(self, split: str = "search") -> dict[str, int]:
        """No documents: search scores are exact values, not means over documents (validation's 20
        identical documents carry no noise either), so there is no noise to guide on."""
        return {}

    def validate(self, c: MergeSpec) -> dict[str, dict]:
        """Validation documents without noise: each of 20 documents scores the true value."""
        self.validations.append(c)
        p = self.point(c)
        scores = self._scores(p, 1.0) if p is not None else dict.fromkeys(self.targets, 0.5)
        return {t: {"score": v, "values": [v] * 20, "aggregation": "mean"} for t, v in scores.items()}

    def evaluate(self, c: MergeSpec, fidelity: float = 1.0) -> dict[str, float]:
        self.calls.append(c)
        self.fidelities.append(fidelity)
        if self.interrupt_on is not None and len(self.calls) == self.interrupt_on:
            raise KeyboardInterrupt
        if len(self.calls) in self.fail_on:
            raise RuntimeError("CUDA out of memory (simulated)")
        p = self.point(c)
        if p is None:  # the base model
            return dict.fromkeys(self.targets, 0.5)
        return self._scores(p, fidelity)

    def _scores(self, p: np.ndarray, fidelity: float) -> dict[str, float]:
        mix = 1.0 - float(np.sum(p**2))
        # Fewer documents, noisier scores: a deterministic wobble that vanishes at fidelity 1.
        wobble = (1.0 - fidelity) * 0.05 * float(np.sin(37.0 * p @ np.arange(1, len(p) + 1)))
        return {t: 1.0 - self.k * float(np.sum((p - tgt) ** 2)) - self.penalty * mix + wobble
                for t, tgt in self.targets.items()}


class NoisyPool:
    """Known true scores plus document-level noise, like a real suite of 0/1 documents.

    A candidate's true accuracy on task t is ``truth(p)[t]`` (p: normalized weights; the base is
    ``base_score``). Each document is answered right when a uniform draw falls below the true
    accuracy; the draw is the document's own difficulty with probability ``shared`` (so models
    agree on easy and hard documents, as real ones do) and else fresh for the candidate, so
    every document's expected outcome is exactly the true accuracy. Draws are deterministic in
    (candidate, split, document): a candidate scores the same each time it is asked."""

    def __init__(self, names, truth, *, n_search=150, n_validation=150, shared=0.5, base_score=0.5, seed=0):
        self.names, self.truth = list(names), truth
        self.tasks = list(truth(np.full(len(self.names), 1 / len(self.names))))
        self.n = {"search": n_search, "validation": n_validation}
        self.shared, self.base_score, self.seed = shared, base_score, seed
        self.validated: list[MergeSpec] = []
        rng = np.random.default_rng(seed)
        self.difficulty = {(s, t): rng.random(n) for s, n in self.n.items() for t in self.tasks}

    checkpoint_names = property(lambda self: self.names)
    has_base = property(lambda self: True)
    directions = property(lambda self: dict.fromkeys(self.tasks, True))
    last_timings: dict[str, float] = {}  # scores drawn, not computed: no stages to time
    last_documents: dict[str, dict] = {}  # set by each full-fidelity evaluate

    def doc_counts(self, split: str = "search") -> dict[str, int]:
        return dict.fromkeys(self.tasks, self.n[split])

    def true_scores(self, c: MergeSpec) -> dict[str, float]:
        w = np.array([max(c.weights.get(n, 0.0), 0.0) for n in self.names])
        if c.method != "linear" and c.lambda_ * w.sum() == 0 or w.sum() == 0:
            return dict.fromkeys(self.tasks, self.base_score)
        return self.truth(w / w.sum())

    def _outcomes(self, c: MergeSpec, split: str) -> dict[str, np.ndarray]:
        key = json.dumps(c.to_json(), sort_keys=True) + split
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
        out = {}
        for t, p in self.true_scores(c).items():
            own = rng.random(self.n[split])
            draw = np.where(rng.random(self.n[split]) < self.shared, self.difficulty[split, t], own)
            out[t] = (draw < p).astype(float)
        return out

    def evaluate(self, c: MergeSpec, fidelity: float = 1.0) -> dict[str, float]:
        outcomes = self._outcomes(c, "search")
        self.last_documents = {t: {"score": float(v.mean()), "values": v.tolist(), "aggregation": "mean"}
                               for t, v in outcomes.items()} if fidelity >= 1 else {}
        return {t: float(v.mean()) for t, v in outcomes.items()}

    def validate(self, c: MergeSpec) -> dict[str, dict]:
        self.validated.append(c)
        return {t: {"score": float(v.mean()), "values": v.tolist(), "aggregation": "mean"}
                for t, v in self._outcomes(c, "validation").items()}
