"""The references: each checkpoint alone, and the base when there is one. Every score of the
study is normalized by them (the best checkpoint per task, or the base: normalize.py), so no
trial exists before all of them are in. A reference that fails fails the set-up."""

from __future__ import annotations

from collections.abc import Mapping

import optuna

from contract.evaluator import Evaluator
from contract.merge import base_only
from optimizer.attrs import (
    A_DIRECTIONS,
    A_REFS,
    BASE_LABEL,
    REFS_BASE,
    REFS_BASE_TIMINGS,
    REFS_SINGLES,
    REFS_TIMINGS,
    UNIT_RAW,
    UNIT_TIMINGS,
    checkpoint_label,
)
from optimizer.baselines import Baseline, single_checkpoints
from optimizer.normalize import denominators
from optimizer.scorer import TrialScorer
from optimizer.spec import StudySpec


class ReferencesPhase:
    def __init__(self, study: optuna.Study, spec: StudySpec, evaluator: Evaluator, scorer: TrialScorer) -> None:
        self.study, self.evaluator, self.scorer = study, evaluator, scorer
        self.tasks, self.names = spec.suite.tasks, spec.checkpoint_names
        base = [Baseline(BASE_LABEL, base_only(self.names))] if evaluator.has_base else []
        self.units: list[Baseline] = single_checkpoints(self.names) + base

    def missing(self, results: Mapping) -> list[Baseline]:
        return [b for b in self.units if b.label not in results]

    def all_in(self, results: Mapping) -> bool:
        return not self.missing(results)

    def run(self, unit: Baseline) -> dict:
        return self.scorer.unit_result(unit.candidate)  # no try: a reference's failure is the set-up's

    @staticmethod
    def legacy_results(attrs: Mapping) -> dict[str, dict]:
        """Unit results as studies set up before set-up units existed stored them (A_REFS only)."""
        legacy = attrs.get(A_REFS) or {}
        timings = legacy.get(REFS_TIMINGS, {})
        out = {checkpoint_label(n): {UNIT_RAW: raw, UNIT_TIMINGS: timings.get(n, {})}
               for n, raw in (legacy.get(REFS_SINGLES) or {}).items()}
        if legacy.get(REFS_BASE) is not None:
            out[BASE_LABEL] = {UNIT_RAW: legacy[REFS_BASE], UNIT_TIMINGS: timings.get(REFS_BASE_TIMINGS, {})}
        return out

    def load(self, results: Mapping) -> dict:
        """The references in their stored form (A_REFS), from every reference's result; the
        scorer normalizes by them from now on."""
        one = lambda n: results[checkpoint_label(n)]  # noqa: E731
        refs = {REFS_SINGLES: {n: one(n)[UNIT_RAW] for n in self.names},
                REFS_BASE: results[BASE_LABEL][UNIT_RAW] if BASE_LABEL in results else None,
                REFS_TIMINGS: {n: one(n)[UNIT_TIMINGS] for n in self.names}}
        if refs[REFS_BASE] is not None:
            refs[REFS_TIMINGS][REFS_BASE_TIMINGS] = results[BASE_LABEL][UNIT_TIMINGS]
        overrides = {t.task: t.higher_is_better for t in self.tasks if t.higher_is_better is not None}
        stored = self.study.user_attrs.get(A_DIRECTIONS) or {}
        directions = {**stored, **self.evaluator.directions, **overrides}
        self.scorer.set_references(directions, denominators(self.tasks, refs[REFS_SINGLES], refs[REFS_BASE], directions))
        return refs

    def store(self, refs: dict) -> None:
        """Write the references and directions where they changed (under the study lock)."""
        attrs = self.study.user_attrs
        if attrs.get(A_REFS) != refs:
            self.study.set_user_attr(A_REFS, refs)
        if attrs.get(A_DIRECTIONS) != self.scorer.directions:
            self.study.set_user_attr(A_DIRECTIONS, self.scorer.directions)
