"""The search phase: the sampler proposes merges until the budget (n_trials, set-up trials
included) is used. Several processes may step one study (workers sharing a database): ``lock``
makes "is there budget left? then ask" atomic across them; a trial's heartbeat tells the others
that its process still works on it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

import numpy as np
import optuna
from optuna.trial import TrialState

from contract.merge import MergeSpec
from optimizer.adapters import optuna as optuna_adapter
from optimizer.attrs import (
    A_FRONT,
    BASE_LABEL,
    KIND_BASELINE,
    KIND_SEARCH,
    T_CANDIDATE,
    T_ERROR,
    T_FIDELITY,
    T_KIND,
    T_LABEL,
    T_OBJ,
    TIME_REUSED_FROM,
    TIME_TOTAL,
    search_label,
)
from optimizer.events import StudyListener
from optimizer.progress import Progress
from optimizer.records import compute_front, trial_attrs, trial_rows, trials
from optimizer.reuse import ScoredMerges
from optimizer.scorer import TrialScorer
from optimizer.space import SearchSpace
from optimizer.spec import StudySpec
from optimizer.steps import CLAIMED, Budget, Step
from optimizer.storage import heartbeat, trials_without_heartbeat
from optimizer.validation_phase import ValidationPhase


class SearchPhase:
    def __init__(
        self,
        study: optuna.Study,
        spec: StudySpec,
        *,
        space: SearchSpace,
        scorer: TrialScorer,
        budget: Budget,
        validation: ValidationPhase | None,
        lock: Callable[[], AbstractContextManager],
        storage: optuna.storages.BaseStorage,
        grace_s: float,
        listener: StudyListener,
        progress: Progress,
    ) -> None:
        self.study, self.spec, self.space, self.scorer, self.budget = study, spec, space, scorer, budget
        self.validation, self.lock, self.storage, self.grace_s = validation, lock, storage, grace_s
        self.listener, self.progress = listener, progress
        self.scored_merges = ScoredMerges()

    def warm_start(self) -> dict[str, float] | None:
        """The sampler's x0: the best baseline's point, when the spec asks for a warm start."""
        if not self.spec.search.warm_start:
            return None
        # Baselines only: x0 must not move when a study resumes mid-search. The base is no point
        # of a linear space (all weights 0 means the uniform average there) unless it is a member.
        base_outside = self.spec.search.method == "linear" and not self.spec.pool.base_in_search
        done = [t for t in trials(self.study) if t.user_attrs.get(T_KIND) == KIND_BASELINE
                and not (t.user_attrs.get(T_LABEL) == BASE_LABEL and base_outside)]
        if not done:
            return None
        best = max(done, key=lambda t: t.user_attrs.get(T_OBJ, -np.inf))
        return self.space.embed(MergeSpec.model_validate(best.user_attrs[T_CANDIDATE]))

    def step(self) -> Step:
        """Claim budget, ask, evaluate, tell: one search trial (or one validation first)."""
        self.fail_stale()
        if self.validation is not None and (done := self.validation.step()) is not None:
            return done
        if self.budget.done():
            return Step.DONE
        with self.lock():
            if self.budget.left(CLAIMED) <= 0:
                return Step.WAIT
            trial = self.study.ask(self.space.distributions())
        cand = self.space.candidate(trial.params, seed=self.spec.search.seed * 100_003 + trial.number)
        stop_beat = lambda: None  # noqa: E731
        try:
            stop_beat = heartbeat(self.storage, optuna_adapter.trial_id(trial))
            self.listener.trial_started(trial.number, search_label(trial.number), cand.to_json())
            attrs, values, pruned = self._run_rungs(trial, cand)
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            if pruned:
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self.study.tell(trial, values)
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr(T_ERROR, "interrupted")
            self.study.tell(trial, state=TrialState.FAIL)
            self.listener.trial_failed(trial.number, "interrupted")
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(T_CANDIDATE, cand.to_json())
            trial.set_user_attr(T_ERROR, error)
            self.study.tell(trial, state=TrialState.FAIL)
            self.listener.trial_failed(trial.number, error)
            self.progress.fail_note(f"trial {trial.number} failed: {exc}")
            return Step.FAILED
        finally:
            stop_beat()
        if pruned:
            self.listener.trial_pruned(trial.number, {"number": trial.number, **attrs})
            self.progress.tick(f"pruned trial {trial.number}")
            return Step.PRUNED
        self.listener.trial_finished(trial.number, {"number": trial.number, **attrs})
        self._after_trial()
        return Step.RAN

    def _run_rungs(self, trial: optuna.Trial, cand: MergeSpec) -> tuple[dict, list[float], bool]:
        """Score on each fidelity in turn; between rungs the pruner may stop the trial. Without a
        pruner there is one rung: all documents."""
        search = self.spec.search
        rungs = search.fidelities if search.pruner != "none" else [1.0]
        total: dict[str, float] = {}
        for i, fraction in enumerate(rungs, 1):
            same = self.scored_merges.find(trials(self.study), cand) if fraction == 1 else None
            if same is not None:  # this merge was scored already (optimizer/reuse.py)
                raw, docs, timings = same[1], same[2], {TIME_TOTAL: 0.0, TIME_REUSED_FROM: float(same[0])}
            else:
                raw, timings = self.scorer.evaluate(cand, fraction)
                docs = self.scorer.last_docs
            total = {k: total.get(k, 0.0) + v for k, v in timings.items()}
            norm, values, obj = self.scorer.scored(raw)
            attrs = trial_attrs(cand.to_json(), KIND_SEARCH, search_label(trial.number), raw, norm, obj, total, docs)
            attrs[T_FIDELITY] = fraction
            if fraction < 1:
                trial.report(obj, i)
                if trial.should_prune():
                    return attrs, values, True
        return attrs, values, False

    def _after_trial(self) -> None:
        front = compute_front(trial_rows(self.study), self.scorer.task_names)
        if front != self.study.user_attrs.get(A_FRONT):
            self.study.set_user_attr(A_FRONT, front)
            self.listener.front_changed(front)
        best = max((r.user_attrs.get(T_OBJ, -np.inf) for r in trials(self.study)), default=float("nan"))
        self.progress.tick(f"best {best:.3f} hv {front['hypervolume']:.3f}")

    def fail_stale(self) -> None:
        """Fail RUNNING trials whose process stopped heart-beating; their budget is free again."""
        rows = trials(self.study, (TrialState.RUNNING,))
        running = {t.number for t in rows}
        if not running:
            return
        optuna.storages.fail_stale_trials(self.study)
        now = datetime.now()
        old = [optuna_adapter.trial_id(t) for t in rows if t.datetime_start and (now - t.datetime_start).total_seconds() > self.grace_s]
        for trial_id in trials_without_heartbeat(self.storage, old):
            try:
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first
        for t in trials(self.study, (TrialState.FAIL,)):
            if t.number in running:
                self.listener.trial_failed(t.number, "no heartbeat: the worker evaluating it stopped")
