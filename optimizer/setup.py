"""A study's set-up, shared by every process working on it, resumable unit by unit.

Units, each claimed like a trial (optimizer/claims.py: a heartbeat keeps a live owner's claim,
the grace period hands a dead owner's to the next process that looks):
- references (references.py): each checkpoint alone, and the base;
- merge baselines (uniform, TA, TIES, DARE-TIES), as many as the budget holds, in that order;
  they need no reference, so they run beside them (baseline_phase.py);
- greedy soup's steps, one at a time (each depends on whether the one before joined), once
  every reference is in (the soup starts from the best checkpoint);
- validation of each set-up trial (ValidationPhase's claims, by trial number).
SetupPhase schedules these units; the phases above say what each unit is and how it runs.

Each result is stored (study user attribute ``setup:LABEL``) as its unit finishes, so nothing
finished is ever redone. Results become trials under the study lock in one fixed order
(checkpoints, base, merge baselines, soups) as soon as every result before them is in: trial
numbers never depend on which worker finished first, so an interrupted set-up ends with the
trials of an uninterrupted one. No trial exists before every reference is in, because every
score is normalized by the references."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import optuna
from optuna.trial import create_trial

from optimizer import validation as V
from optimizer.attrs import (
    A_FRONT,
    A_SETUP_DONE,
    A_SETUP_OPEN,
    A_VREFS,
    CLAIM_AT,
    KIND_BASELINE,
    REFS_SINGLES,
    SETUP_CLAIM,
    SETUP_RESULT,
    T_KIND,
    T_LABEL,
    T_RAW,
    T_SDOCS,
    T_TIMES,
    UNIT_DOCS,
    UNIT_ERROR,
    UNIT_RAW,
    UNIT_TIMINGS,
)
from optimizer.baseline_phase import BaselinesPhase
from optimizer.baselines import Baseline
from optimizer.claims import Claims
from optimizer.events import StudyListener
from optimizer.progress import Progress
from optimizer.records import compute_front, trial_attrs, trial_rows, trials
from optimizer.references import ReferencesPhase
from optimizer.scorer import TrialScorer
from optimizer.space import SearchSpace
from optimizer.steps import Step
from optimizer.validation_phase import ValidationPhase

# The keys under their earlier names here (tests/, service/worker/runtime.py read them from setup).
RESULT, CLAIM, A_OPEN, A_DONE = SETUP_RESULT, SETUP_CLAIM, A_SETUP_OPEN, A_SETUP_DONE


def has_free_work(attrs: Mapping, grace_s: float) -> bool:
    """False only while every unit open at the last look is held by a live claim elsewhere."""
    if A_SETUP_DONE in attrs or A_SETUP_OPEN not in attrs:
        return True
    pending = [claim for result, claim in attrs[A_SETUP_OPEN] if result not in attrs]
    now = time.time()
    return not pending or any(now - (attrs.get(c) or {}).get(CLAIM_AT, 0) >= grace_s for c in pending)


def setup_claims(study: optuna.Study, owner: str, *, heartbeat_s: float, grace_s: float) -> Claims:
    """Claims on set-up units (``setupclaim:LABEL``; done once ``setup:LABEL`` holds the result)."""
    return Claims(study, owner, heartbeat_s=heartbeat_s, grace_s=grace_s, claim_prefix=SETUP_CLAIM,
                  done_prefix=SETUP_RESULT)


class SetupPhase:
    def __init__(
        self,
        study: optuna.Study,
        *,
        references: ReferencesPhase,
        baselines: BaselinesPhase,
        validation: ValidationPhase | None,
        scorer: TrialScorer,
        space: SearchSpace,
        claims: Claims,
        lock: Callable[[], AbstractContextManager],
        listener: StudyListener,
        progress: Progress,
    ) -> None:
        self.study, self.references, self.baselines, self.validation = study, references, baselines, validation
        self.scorer, self.space, self.claims, self.lock = scorer, space, claims, lock
        self.listener, self.progress = listener, progress
        self.task_names = scorer.task_names
        self.done = False

    # ------------------------------------------------------------ one step
    def step(self) -> Step | None:
        """One unit of set-up work (Step.SETUP, or Step.VALIDATED); Step.WAIT while every open
        unit is held by a live claim elsewhere; None once set-up is complete."""
        if self.done:
            return None
        if A_SETUP_DONE in self.study.user_attrs:
            self.references.load(self._results(self.study.user_attrs))
            self.done = True
            return None
        with self.lock():
            added = self._commit()
            units = {u.label: u for u in self._open(self._results(self.study.user_attrs))}
            attrs = self.study.user_attrs
            todo, busy = self.claims.open_work(attrs, units)
            vwork = self.validation.setup_work(attrs) if self.validation is not None else []
            self._publish(attrs, list(units), vwork)
            stop = self.claims.take(todo[0]) if todo else None
        self._announce(added)
        if todo:
            try:
                result = self._run(units[todo[0]])
            finally:
                stop()
            with self.lock():
                self.study.set_user_attr(self.claims.done_key(todo[0]), result)
                added = self._commit()
            self._announce(added)
            if UNIT_ERROR in result:
                self.progress.fail_note(f"baseline {todo[0]} failed: {result[UNIT_ERROR]}")
            return Step.SETUP
        vbusy = False
        if self.validation is not None:
            did, vbusy = self.validation.run_one(self.validation.setup_work)
            if did is not None:
                return did
        if busy or vbusy:
            return Step.WAIT
        with self.lock():
            self._finish()
        self.done = True
        return None

    def open_units(self) -> list[str]:
        """Labels of the evaluation units not done yet that may start now."""
        with self.lock():
            self._commit()  # the references' denominators, which the next soup needs
            return [u.label for u in self._open(self._results(self.study.user_attrs))]

    def _run(self, unit: Baseline) -> dict:
        """Evaluate one unit: its result ({"raw", "timings"}, or {"error"} for a baseline)."""
        if unit in self.references.units:
            return self.references.run(unit)
        return self.baselines.run(unit)

    # ------------------------------------------------------------ what is stored
    def _set_up_trials(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in trials(self.study) if t.user_attrs.get(T_KIND) == KIND_BASELINE]

    def _results(self, attrs: Mapping) -> dict[str, dict]:
        """Label -> {"raw", "timings"} or {"error"}: unit results, and what studies set up
        before units existed stored (their references, their baseline trials)."""
        out = self.references.legacy_results(attrs)
        for t in self._set_up_trials():
            ua = t.user_attrs
            out[ua[T_LABEL]] = {UNIT_RAW: ua[T_RAW], UNIT_TIMINGS: ua.get(T_TIMES, {}),
                                **({UNIT_DOCS: ua[T_SDOCS]} if T_SDOCS in ua else {})}
        out.update({k[len(SETUP_RESULT):]: v for k, v in attrs.items() if k.startswith(SETUP_RESULT)})
        return out

    def _open(self, results: Mapping) -> list[Baseline]:
        """Units not done, most urgent first: references (everything waits for them), the next
        soup (the one chain that cannot be shared), merge baselines."""
        missing, merges = self.references.missing(results), self.baselines.open_merges(results)
        if missing:
            return missing + merges
        _, nxt = self.baselines.soups(results)
        return ([nxt] if nxt else []) + merges

    def _order(self, results: Mapping) -> list[Baseline]:
        """Set-up trials in their fixed order (checkpoints, base, merge baselines, soups), up to
        the first result not yet in."""
        out = []
        for b in [*self.references.units, *self.baselines.merges]:
            if b.label not in results:
                return out
            out.append(b)
        return out + self.baselines.soups(results)[0]

    # ------------------------------------------------------------ trials (under the study lock)
    def _commit(self) -> list[tuple[int, dict]]:
        """Add the trials whose turn has come; (number, attrs) of each, announced after the lock
        (the service's listener writes rows that the PostgreSQL study lock would block)."""
        results = self._results(self.study.user_attrs)
        if not self.references.all_in(results):
            return []
        refs = self.references.load(results)
        attrs = self.study.user_attrs
        self.references.store(refs)
        have = {t.user_attrs.get(T_LABEL) for t in self._set_up_trials()}
        added = []
        for b in self._order(results):
            res = results[b.label]
            if b.label in have or UNIT_ERROR in res:
                continue
            norm, values, obj = self.scorer.scored(res[UNIT_RAW])
            ua = trial_attrs(b.candidate.to_json(), KIND_BASELINE, b.label, res[UNIT_RAW], norm, obj, res[UNIT_TIMINGS],
                             res.get(UNIT_DOCS))
            self.study.add_trial(create_trial(params=self.space.embed(b.candidate),
                                              distributions=self.space.distributions(), values=values, user_attrs=ua))
            added.append((max(t.number for t in self.study.get_trials(deepcopy=False)), ua))
        if self.validation is not None and A_VREFS not in attrs:
            self.validation.set_references(refs[REFS_SINGLES], self._numbers(), self.scorer.directions)
        if added:
            front = compute_front(trial_rows(self.study), self.task_names)
            if front != attrs.get(A_FRONT):
                self.study.set_user_attr(A_FRONT, front)
        return added

    def _announce(self, added: list[tuple[int, dict]]) -> None:
        for number, ua in added:
            self.listener.trial_finished(number, {"number": number, **ua})
            self.progress.tick(f"set-up: {ua[T_LABEL]}")
        if added:
            self.listener.front_changed(self.study.user_attrs[A_FRONT])

    def _numbers(self) -> dict[str, int]:
        return {t.user_attrs.get(T_LABEL): t.number for t in self._set_up_trials()}

    def _publish(self, attrs: Mapping, units: list[str], vwork: list[int]) -> None:
        keys = [[self.claims.done_key(u), self.claims.claim_key(u)] for u in units]
        keys += [[V.val_key(n), V.claim_key(n)] for n in vwork]
        if attrs.get(A_SETUP_OPEN) != keys:
            self.study.set_user_attr(A_SETUP_OPEN, keys)

    def _finish(self) -> None:
        if A_SETUP_DONE in self.study.user_attrs:
            return
        if self.validation is not None:
            self.validation.finish_setup(self._numbers())
        self.study.set_user_attr(A_SETUP_DONE, True)
