"""The set-up's merge baselines (baselines.py) and greedy soup (greedy.py), as many as the
budget holds once the references are trials: the merge baselines take what is left in their
order, greedy soup the rest (fixed here, not by which process finishes first). A baseline that
fails is stored as failed, not retried."""

from __future__ import annotations

from collections.abc import Mapping

from optimizer import greedy
from optimizer.attrs import UNIT_ERROR, UNIT_RAW, is_checkpoint, is_soup
from optimizer.baselines import Baseline, merge_baselines
from optimizer.scorer import TrialScorer
from optimizer.spec import StudySpec


class BaselinesPhase:
    def __init__(self, spec: StudySpec, *, has_base: bool, n_references: int, scorer: TrialScorer) -> None:
        self.scorer = scorer
        self.names = spec.checkpoint_names
        search = spec.search
        slots = max(0, search.n_trials - n_references)  # the references are trials whatever it says
        self.merges = merge_baselines(self.names, has_base)[:slots] if search.baselines else []
        soups = search.baselines and search.greedy_soup and len(self.names) > 2
        self.soup_slots = slots - len(self.merges) if soups else 0

    def run(self, unit: Baseline) -> dict:
        try:
            return self.scorer.unit_result(unit.candidate)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            return {UNIT_ERROR: f"{type(exc).__name__}: {exc}"}

    def open_merges(self, results: Mapping) -> list[Baseline]:
        """Merge baselines not done: they need no reference, so they run beside them."""
        return [b for b in self.merges if b.label not in results]

    def soups(self, results: Mapping) -> tuple[list[Baseline], Baseline | None]:
        """(the soups evaluated so far, in order; the next one to evaluate). Only once every
        reference is in: the soup starts from the best checkpoint by objective."""
        if not self.soup_slots:
            return [], None
        objectives = {label: self._objective(res) for label, res in results.items()
                      if is_checkpoint(label) or is_soup(label)}
        return greedy.plan(self.names, objectives, self.soup_slots)

    def _objective(self, result: Mapping) -> float | None:
        return None if UNIT_ERROR in result else self.scorer.scored(result[UNIT_RAW])[2]
