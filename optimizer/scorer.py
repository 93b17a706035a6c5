"""Scoring a merge for the study: the evaluator's raw scores checked and timed, then normalized by
the references and reduced to the search objective. Every phase scores through one TrialScorer,
so a baseline and a search trial with equal raw scores get equal objectives."""

from __future__ import annotations

import logging
import time

import numpy as np

from contract.evaluator import Evaluator
from contract.merge import MergeSpec
from optimizer.attrs import TIME_TOTAL, UNIT_DOCS, UNIT_RAW, UNIT_TIMINGS
from optimizer.normalize import normalize, scalarize
from optimizer.spec import StudySpec
from optimizer.validation import to_docs

log = logging.getLogger(__name__)


class TrialScorer:
    def __init__(self, evaluator: Evaluator, spec: StudySpec, n_objectives: int) -> None:
        self.evaluator = evaluator
        self.tasks = spec.suite.tasks
        self.task_names = spec.task_names
        self.objective = spec.search.objective
        self.per_task = n_objectives > 1  # one Optuna objective per task, else the scalar one
        self.chance = {t.task: t.chance for t in self.tasks}  # chance levels for normalize()
        # Set by the references phase once every reference is in (nothing is scored before).
        self.directions: dict[str, bool] = {}
        self.dens: dict[str, float | None] = {}
        # The per-document values behind the last full-fidelity scores (stats.DocScores JSON by
        # task), or None when the evaluator gave none: stored with the trial (T_SDOCS).
        self.last_docs: dict[str, dict] | None = None

    def set_references(self, directions: dict[str, bool], dens: dict[str, float | None]) -> None:
        self.directions, self.dens = directions, dens

    def evaluate(self, cand: MergeSpec, fidelity: float = 1.0) -> tuple[dict[str, float], dict[str, float]]:
        """Raw scores on the search documents (``fidelity``: the fraction of them) and timings."""
        t0 = time.perf_counter()
        raw = self.evaluator.evaluate(cand, fidelity) if fidelity < 1 else self.evaluator.evaluate(cand)
        timings = dict(self.evaluator.last_timings or {})
        timings[TIME_TOTAL] = time.perf_counter() - t0
        missing = [t for t in self.task_names if t not in raw]
        if missing:
            raise RuntimeError(f"evaluator returned no score for task '{missing[0]}'")
        scores = {t: float(raw[t]) for t in self.task_names}
        bad = [t for t, v in scores.items() if not np.isfinite(v)]
        if bad:  # Optuna would fail the trial silently (and NaN is no JSON for the service's tables)
            raise RuntimeError(f"evaluator returned a non-finite score for task '{bad[0]}': {scores[bad[0]]}")
        self.last_docs = self._documents(scores) if fidelity >= 1 else None
        return scores, timings

    def unit_result(self, cand: MergeSpec) -> dict:
        """A set-up unit's result: raw scores, timings and, where given, per-document values."""
        raw, timings = self.evaluate(cand)
        return {UNIT_RAW: raw, UNIT_TIMINGS: timings, **({UNIT_DOCS: self.last_docs} if self.last_docs else {})}

    def _documents(self, scores: dict[str, float]) -> dict[str, dict] | None:
        """The evaluator's per-document values, if every task has them and they aggregate to the
        score it returned (else none: the study then recommends without them)."""
        given = self.evaluator.last_documents
        if not given:
            return None
        try:  # checked as validation's are (validation.to_docs), against the returned scores
            docs = to_docs({t: {**e, "score": scores[t]} for t, e in given.items() if t in scores}, self.task_names)
        except (RuntimeError, ValueError, KeyError) as exc:
            log.warning("per-document search values not kept: %s", exc)
            return None
        return {t: d.to_json() for t, d in docs.items()}

    def scored(self, raw: dict[str, float]) -> tuple[dict[str, float], list[float], float]:
        """(normalized scores, the values Optuna is told, the search objective)."""
        norm = normalize(raw, self.dens, self.directions, self.chance)
        obj = scalarize(norm, self.tasks, self.objective)
        values = [norm[t] for t in self.task_names] if self.per_task else [obj]
        return norm, values, obj
