"""Uncertainty of scores measured on a finite set of documents.

Documents are the unit of sampling: every interval here resamples documents (a bootstrap with a
fixed seed, so a report is reproducible), and every comparison of two models resamples the SAME
documents for both (a paired bootstrap), which is what makes small differences measurable.
Normalized scores are resampled together with their reference model on the same documents, so
their intervals carry the reference's uncertainty too.

A task's per-document values and how lm-eval aggregates them:
- ``mean``: one value per document (accuracy, exact match, ...);
- ``perplexity``: one log-likelihood per document, exp(-mean);
- ``weighted_perplexity`` / ``bits_per_byte``: (log-likelihood, words or bytes) per document."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

AGGREGATIONS = ("mean", "perplexity", "weighted_perplexity", "bits_per_byte")
BOOTSTRAP = 2000
Z95 = 1.959963984540054


@dataclass(frozen=True)
class DocScores:
    """One model's per-document values on one task, in a fixed document order."""

    values: np.ndarray  # [n] or, for the weighted aggregations, [n, 2]
    aggregation: str = "mean"

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"no intervals for aggregation '{self.aggregation}' (supported: {AGGREGATIONS})")
        object.__setattr__(self, "values", np.asarray(self.values, dtype=float))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def score(self) -> float:
        return float(aggregate(self.values[None], self.aggregation)[0])

    # Compact JSON: 0/1 outcomes (the common case) as a bit string, everything else as floats.
    def to_json(self) -> dict:
        v = self.values
        if v.ndim == 1 and np.isin(v, (0.0, 1.0)).all():
            bits = np.packbits(v.astype(np.uint8))
            return {"agg": self.aggregation, "n": int(v.size), "bits": base64.b64encode(bits.tobytes()).decode()}
        return {"agg": self.aggregation, "n": int(len(v)), "values": [[float(f"{x:.9g}") for x in r] if v.ndim == 2
                                                                       else float(f"{r:.9g}") for r in v.tolist()]}

    @classmethod
    def from_json(cls, data: Mapping) -> DocScores:
        if "bits" in data:
            raw = np.frombuffer(base64.b64decode(data["bits"]), dtype=np.uint8)
            return cls(np.unpackbits(raw)[: data["n"]].astype(float), data["agg"])
        return cls(np.asarray(data["values"], dtype=float), data["agg"])


def aggregate(values: np.ndarray, aggregation: str) -> np.ndarray:
    """Aggregate over the document axis of ``values`` [..., n] (or [..., n, 2])."""
    if aggregation == "mean":
        return values.mean(axis=-1)
    if aggregation == "perplexity":
        return np.exp(-values.mean(axis=-1))
    ratio = values[..., 0].sum(axis=-1) / values[..., 1].sum(axis=-1)
    return np.exp(-ratio) if aggregation == "weighted_perplexity" else -ratio / math.log(2)


def resample_indices(n: int, seed: int = 0, draws: int = BOOTSTRAP) -> np.ndarray:
    """[draws, n] document indices. The same seed and n give the same draws, so every model
    scored on one task's documents is resampled identically (paired)."""
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


@dataclass(frozen=True)
class Estimate:
    value: float
    se: float
    lo: float
    hi: float

    def to_json(self) -> dict:
        return {"value": self.value, "se": self.se, "lo": self.lo, "hi": self.hi}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def _from_draws(value: float, draws: np.ndarray) -> Estimate:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Estimate(value, float("nan"), float("nan"), float("nan"))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return Estimate(float(value), float(draws.std(ddof=1)), float(lo), float(hi))


def raw_interval(docs: DocScores) -> Estimate:
    """A task's raw score with its 95% interval: Wilson's for 0/1 outcomes (right near 0 and 1,
    where a normal or bootstrap interval collapses to a point), else the bootstrap."""
    v = docs.values
    if docs.aggregation == "mean" and v.ndim == 1 and np.isin(v, (0.0, 1.0)).all():
        n, p = v.size, float(v.mean())
        centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
        return Estimate(p, math.sqrt(p * (1 - p) / n), centre - half, centre + half)
    idx = resample_indices(docs.n)
    return _from_draws(docs.score, aggregate(v[idx], docs.aggregation))


def expected_se(docs: DocScores, n: int) -> float:
    """The standard error a score of this model would have on ``n`` documents like these."""
    if docs.aggregation == "mean":
        return float(docs.values.std(ddof=1) / math.sqrt(n)) if docs.n > 1 else float("nan")
    return raw_interval(docs).se * math.sqrt(docs.n / n)


@dataclass(frozen=True)
class TaskTerm:
    """How one task enters the scalarized objective."""

    task: str
    weight: float
    higher_is_better: bool
    reference: DocScores | None  # None: unnormalized
    chance: float | None = None  # chance-corrected: (s - chance) / (reference - chance)


def _normalized(model: np.ndarray, ref: np.ndarray | None, higher: bool, chance: float | None = None) -> np.ndarray:
    if ref is None:
        return model
    with np.errstate(divide="ignore", invalid="ignore"):
        if chance is not None and higher:
            out = np.where(ref > chance, (model - chance) / (ref - chance), model / ref)
        else:
            out = model / ref if higher else ref / model
    # normalize() leaves a score unnormalized when the reference is 0 (nothing to divide by)
    return np.where(np.isfinite(out), out, model)


class Bootstrap:
    """Resampled objectives of many models over one fixed set of draws per task, so that any
    two models' draws pair up document by document."""

    def __init__(self, terms: list[TaskTerm], doc_counts: Mapping[str, int], seed: int = 0) -> None:
        self.terms = terms
        total = sum(t.weight for t in terms) or 1.0
        self.weights = {t.task: t.weight / total for t in terms}
        self.idx = {t.task: resample_indices(doc_counts[t.task], seed + i) for i, t in enumerate(terms)}
        self._ref = {
            t.task: (None if t.reference is None else
                     (aggregate(t.reference.values[None], t.reference.aggregation)[0],
                      aggregate(t.reference.values[self.idx[t.task]], t.reference.aggregation)))
            for t in terms
        }

    def normalized(self, task: str, docs: DocScores) -> tuple[float, np.ndarray]:
        term = next(t for t in self.terms if t.task == task)
        idx = self.idx[task]
        if len(docs.values) != idx.shape[1]:
            raise ValueError(f"task '{task}': {len(docs.values)} documents, expected {idx.shape[1]}")
        point = aggregate(docs.values[None], docs.aggregation)
        draws = aggregate(docs.values[idx], docs.aggregation)
        ref = self._ref[task]
        if ref is None:
            return float(point[0]), draws
        return (float(_normalized(point, np.array([ref[0]]), term.higher_is_better, term.chance)[0]),
                _normalized(draws, ref[1], term.higher_is_better, term.chance))

    def objective(self, docs: Mapping[str, DocScores]) -> tuple[float, np.ndarray]:
        value, draws = 0.0, 0.0
        for t in self.terms:
            v, d = self.normalized(t.task, docs[t.task])
            value += self.weights[t.task] * v
            draws = draws + self.weights[t.task] * d
        return value, np.asarray(draws)

    def summary(self, docs: Mapping[str, DocScores]) -> dict:
        """Raw and normalized per task, and the objective, each with SE and 95% interval."""
        out: dict = {"n": {}, "raw": {}, "normalized": {}}
        for t in self.terms:
            d = docs[t.task]
            out["n"][t.task] = d.n
            out["raw"][t.task] = raw_interval(d).to_json()
            out["normalized"][t.task] = _from_draws(*self.normalized(t.task, d)).to_json()
        out["objective"] = _from_draws(*self.objective(docs)).to_json()
        return out


@dataclass(frozen=True)
class Comparison:
    """A - B on the objective, paired over the same documents."""

    diff: float
    lo: float
    hi: float
    p: float  # two-sided bootstrap p-value

    @property
    def significant(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def to_json(self) -> dict:
        return {"diff": self.diff, "lo": self.lo, "hi": self.hi, "p": self.p, "significant": self.significant}

    def __str__(self) -> str:
        return f"{self.diff:+.4f} (95% CI [{self.lo:+.4f}, {self.hi:+.4f}], p={self.p:.3f})"


def paired_draws(boot: Bootstrap, a: Mapping[str, DocScores], b: Mapping[str, DocScores]) -> tuple[float, np.ndarray]:
    """A - B on the objective: the point difference and its draws, paired over documents."""
    va, da = boot.objective(a)
    vb, db = boot.objective(b)
    return float(va - vb), da - db


def lower_bound(draws: np.ndarray, alpha: float = 0.05) -> float:
    """The one-sided (1 - alpha) lower bound of a difference from its paired draws."""
    return float(np.quantile(draws, alpha))


def comparison(diff: float, draws: np.ndarray) -> Comparison:
    lo, hi = np.quantile(draws, [0.025, 0.975])
    p = min(1.0, 2 * min(float((draws <= 0).mean()), float((draws >= 0).mean())))
    return Comparison(diff, float(lo), float(hi), p)


def compare(boot: Bootstrap, a: Mapping[str, DocScores], b: Mapping[str, DocScores]) -> Comparison:
    return comparison(*paired_draws(boot, a, b))
