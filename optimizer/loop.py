"""The ask/tell loop. Phases, each resumable from storage:

1. references: each checkpoint alone (and the base, when there is one) is evaluated; the
   checkpoints' scores give the held-in experts, the base's the held-out reference;
2. baselines: uniform average, task arithmetic, TIES, DARE-TIES, greedy soup (when the spec asks);
   1 and 2 (and the validation of their trials) are units any process may take (setup.py);
3. search: the sampler proposes weights until the budget (n_trials, baselines included) is met.

Reference and baseline trials are added with ``study.add_trial`` so that samplers do not mistake
them for their own proposals, but they carry the same parameters as search trials (their
projection into the space) so intersection search spaces stay intact.

Several processes may run ``step()`` on one study (workers sharing a database): ``claim`` is a
lock the caller provides so that "is there budget left? then ask" is atomic across them."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

import numpy as np
import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from optimizer import records as R
from optimizer.candidate import Candidate, Evaluator
from optimizer.carry_over import carried_over
from optimizer.events import NullListener, StudyListener, no_lock
from optimizer.normalize import normalize, scalarize
from optimizer.reuse import ScoredMerges
from optimizer.samplers import make_pruner, make_sampler, n_objectives
from optimizer.setup import SetupPhase
from optimizer.space import SearchSpace
from optimizer.spec import SpecError, StudySpec
from optimizer.steps import Step  # defined there for the phases; imported from here too
from optimizer.storage import (
    GRACE_S,
    HEARTBEAT_S,
    heartbeat,
    open_storage,
    trials_without_heartbeat,
)
from optimizer.validation_phase import ValidationPhase

log = logging.getLogger(__name__)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # trials that used their budget
CLAIMED = (*DONE, TrialState.RUNNING, TrialState.WAITING)


class StudyFailed(RuntimeError):
    """Too many trials failed; the last error says why."""


def open_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, StudySpec]:
    """Create the Optuna study (objectives, spec) or re-open it; refuse a different study.
    Returns the study and the spec it runs with (a stored study keeps its defaults: carry_over)."""
    k = n_objectives(spec.search, len(spec.suite.tasks))
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=["maximize"] * k,
                                load_if_exists=True, pruner=make_pruner(spec.search))
    if len(study.directions) != k:
        raise SpecError(f"study '{spec.name}' already exists with {len(study.directions)} objectives")
    stored = study.user_attrs.get(R.A_IDENTITY)
    spec = carried_over(spec, stored)
    mine = _jsonable(spec.identity())
    if stored is None:
        study.set_user_attr(R.A_SPEC, spec.model_dump(mode="json", by_alias=True))
        study.set_user_attr(R.A_IDENTITY, mine)
    elif stored != mine:
        diff = [key for key in {**mine, **stored} if mine.get(key) != stored.get(key)]  # either side's keys
        raise SpecError(
            f"study '{spec.name}' already exists in its storage with a different "
            f"{', '.join(diff)}; choose another name to start a new study"
        )
    return study, spec


class StudyRunner:
    def __init__(
        self,
        spec: StudySpec,
        evaluator: Evaluator,
        *,
        progress: bool = True,
        listener: StudyListener | None = None,
        claim: Callable[[], AbstractContextManager] = no_lock,
        storage: optuna.storages.RDBStorage | None = None,
    ) -> None:
        self.spec = spec
        self.evaluator = evaluator
        self.progress = progress
        self.listener = listener or NullListener()
        self.claim = claim
        self.tasks = spec.suite.tasks
        self.task_names = spec.task_names
        self.storage = storage or open_storage(spec.storage)
        self.study, self.spec = open_study(spec, self.storage)
        spec = self.spec
        self.space = SearchSpace(spec.search, spec.weight_names)
        self.validation = ValidationPhase(self) if spec.suite.validation else None
        self.setup = SetupPhase(self)
        self.failures = 0
        self.prepared = False
        self._scored_merges = ScoredMerges()
        self.chance = {t.task: t.chance for t in self.tasks}  # chance levels for normalize()
        self._bar: tqdm | None = None

    # ---------------------------------------------------------------- study set-up
    @property
    def heartbeat_s(self) -> float:
        return getattr(self.storage, "heartbeat_interval", None) or HEARTBEAT_S

    @property
    def grace_s(self) -> float:
        return getattr(self.storage, "grace_period", None) or GRACE_S

    def rows(self, states: tuple[TrialState, ...] = (TrialState.COMPLETE,)) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, cand: Candidate, fidelity: float = 1.0) -> tuple[dict[str, float], dict[str, float]]:
        t0 = time.perf_counter()
        raw = self.evaluator.evaluate(cand, fidelity) if fidelity < 1 else self.evaluator.evaluate(cand)
        timings = dict(self.evaluator.last_timings or {})
        timings["total_s"] = time.perf_counter() - t0
        missing = [t for t in self.task_names if t not in raw]
        if missing:
            raise RuntimeError(f"evaluator returned no score for task '{missing[0]}'")
        scores = {t: float(raw[t]) for t in self.task_names}
        bad = [t for t, v in scores.items() if not np.isfinite(v)]
        if bad:  # Optuna would fail the trial silently (and NaN is no JSON for the service's tables)
            raise RuntimeError(f"evaluator returned a non-finite score for task '{bad[0]}': {scores[bad[0]]}")
        return scores, timings

    def scored(self, raw: dict[str, float]) -> tuple[dict[str, float], list[float], float]:
        norm = normalize(raw, self.dens, self.directions, self.chance)
        obj = scalarize(norm, self.tasks, self.spec.search.objective)
        values = [obj] if len(self.study.directions) == 1 else [norm[t] for t in self.task_names]
        return norm, values, obj

    @staticmethod
    def trial_attrs(cand: Candidate, kind: str, label: str, raw: dict, norm: dict, obj: float, timings: dict) -> dict:
        return {
            R.T_CANDIDATE: cand.to_json(), R.T_KIND: kind, R.T_LABEL: label, R.T_RAW: raw,
            R.T_NORM: norm, R.T_OBJ: obj, R.T_TIMES: timings,
        }

    def prepare(self, *, wait: bool = True) -> Step | None:
        """Set-up (setup.py: references, baselines, soups, their validation; what is stored is
        not redone), then the sampler. ``wait=False``: at most one unit of set-up work, returning
        its Step (SETUP, VALIDATED, or WAIT while other processes hold every open unit) until
        set-up is complete; None once prepared."""
        if self.prepared:
            return None
        while (step := self._setup_step()) is not None:
            if not wait:
                return step
            if step is Step.WAIT:  # units held by other processes (or dead ones, until their grace ends)
                time.sleep(min(self.heartbeat_s, 2.0))
        if self.validation is None:
            self.warn("suite.validation is 0: every reported score is on the documents the search "
                      "optimized on, so the best trials' scores are biased upward")
        self.study.sampler = make_sampler(self.spec.search, self._x0(), dim=len(self.space.distributions()))
        self.prepared = True
        return None

    def _setup_step(self) -> Step | None:
        self._fail_stale()
        self.tick("set-up")
        return self.setup.step()

    # ---------------------------------------------------------------- phase 3: search
    def _x0(self) -> dict[str, float] | None:
        if not self.spec.search.warm_start:
            return None
        # Baselines only: x0 must not move when a study resumes mid-search. The base is no point
        # of a linear space (all weights 0 means the uniform average there) unless it is a member.
        base_outside = self.spec.search.method == "linear" and not self.spec.pool.base_in_search
        done = [t for t in self.rows() if t.user_attrs.get(R.T_KIND) == "baseline"
                and not (t.user_attrs.get(R.T_LABEL) == R.BASE_LABEL and base_outside)]
        if not done:
            return None
        best = max(done, key=lambda t: t.user_attrs.get(R.T_OBJ, -np.inf))
        return self.space.embed(Candidate.model_validate(best.user_attrs[R.T_CANDIDATE]))

    def _budget_left(self, states: tuple[TrialState, ...] = DONE) -> int:
        return self.spec.search.n_trials - len(self.rows(states))

    def budget_done(self) -> bool:
        return self._budget_left(DONE) <= 0

    def step(self) -> Step:
        """Claim budget, ask, evaluate, tell: one search trial."""
        if not self.prepared:
            self.prepare()
        self._fail_stale()
        if self.validation is not None and (done := self.validation.step()) is not None:
            return done
        if self._budget_left(DONE) <= 0:
            return Step.DONE
        with self.claim():
            if self._budget_left(CLAIMED) <= 0:
                return Step.WAIT
            trial = self.study.ask(self.space.distributions())
        cand = self.space.candidate(trial.params, seed=self.spec.search.seed * 100_003 + trial.number)
        stop_beat = lambda: None  # noqa: E731
        try:
            stop_beat = heartbeat(self.storage, trial._trial_id)
            self.listener.trial_started(trial.number, f"trial {trial.number}", cand.to_json())
            attrs, values, pruned = self._run_rungs(trial, cand)
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            if pruned:
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self.study.tell(trial, values)
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr(R.T_ERROR, "interrupted")
            self.study.tell(trial, state=TrialState.FAIL)
            self.listener.trial_failed(trial.number, "interrupted")
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(R.T_CANDIDATE, cand.to_json())
            trial.set_user_attr(R.T_ERROR, error)
            self.study.tell(trial, state=TrialState.FAIL)
            self.listener.trial_failed(trial.number, error)
            self.fail_note(f"trial {trial.number} failed: {exc}")
            return Step.FAILED
        finally:
            stop_beat()
        if pruned:
            self.listener.trial_pruned(trial.number, {"number": trial.number, **attrs})
            self.tick(f"pruned trial {trial.number}")
            return Step.PRUNED
        self.listener.trial_finished(trial.number, {"number": trial.number, **attrs})
        self._after_trial()
        return Step.RAN

    def _run_rungs(self, trial: optuna.Trial, cand: Candidate) -> tuple[dict, list[float], bool]:
        """Score on each fidelity in turn; between rungs the pruner may stop the trial. Without a
        pruner there is one rung: all documents."""
        search = self.spec.search
        rungs = search.fidelities if search.pruner != "none" else [1.0]
        total: dict[str, float] = {}
        for i, fraction in enumerate(rungs, 1):
            same = self._scored_merges.find(self.rows(), cand) if fraction == 1 else None
            if same is not None:  # this merge was scored already (optimizer/reuse.py)
                raw, timings = same[1], {"total_s": 0.0, "reused_from_trial": float(same[0])}
            else:
                raw, timings = self.evaluate(cand, fraction)
            total = {k: total.get(k, 0.0) + v for k, v in timings.items()}
            norm, values, obj = self.scored(raw)
            attrs = self.trial_attrs(cand, "search", f"trial {trial.number}", raw, norm, obj, total)
            attrs[R.T_FIDELITY] = fraction
            if fraction < 1:
                trial.report(obj, i)
                if trial.should_prune():
                    return attrs, values, True
        return attrs, values, False

    # ---------------------------------------------------------------- bookkeeping
    def _fail_stale(self) -> None:
        """Fail RUNNING trials whose process stopped heart-beating; their budget is free again."""
        rows = self.rows((TrialState.RUNNING,))
        running = {t.number for t in rows}
        if not running:
            return
        optuna.storages.fail_stale_trials(self.study)
        grace = getattr(self.storage, "grace_period", None) or GRACE_S
        now = datetime.now()
        old = [t._trial_id for t in rows if t.datetime_start and (now - t.datetime_start).total_seconds() > grace]
        for trial_id in trials_without_heartbeat(self.storage, old):
            try:
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first
        for t in self.rows((TrialState.FAIL,)):
            if t.number in running:
                self.listener.trial_failed(t.number, "no heartbeat: the worker evaluating it stopped")

    def warn(self, message: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(f"warning: {message}")
        else:
            log.warning(message)

    def note(self, message: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message)
        else:
            log.info(message)

    def fail_note(self, message: str) -> None:
        self.failures += 1
        self.warn(message)
        if self.failures >= self.spec.search.max_failures:
            raise StudyFailed(f"{self.failures} trials failed; last: {message}")

    def _after_trial(self) -> None:
        front = R.compute_front(R.trial_rows(self.study), self.task_names)
        if front != self.study.user_attrs.get(R.A_FRONT):
            self.study.set_user_attr(R.A_FRONT, front)
            self.listener.front_changed(front)
        best = max((r.user_attrs.get(R.T_OBJ, -np.inf) for r in self.rows()), default=float("nan"))
        self.tick(f"best {best:.3f} hv {front['hypervolume']:.3f}")

    def tick(self, note: str) -> None:
        if self._bar is not None:
            self._bar.n = len(self.rows())
            self._bar.set_postfix_str(note)
            self._bar.refresh()

    def run(self, poll_s: float = 2.0) -> dict:
        """Run (or resume) the study to its budget in this process; returns the stored front."""
        self._bar = tqdm(total=self.spec.search.n_trials, desc=self.spec.name, unit="trial", disable=not self.progress)
        try:
            self.prepare()
            while (result := self.step()) is not Step.DONE:
                if result is Step.WAIT:  # trials running elsewhere (or stale, failed after the grace period)
                    self.tick("waiting for running trials")
                    time.sleep(poll_s)
        finally:
            self._bar.close()
            self._bar = None
        return R.stored_front(self.study)


def _jsonable(value):
    return json.loads(json.dumps(value))
