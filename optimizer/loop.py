"""The study runner: it opens the study and composes its phases, each resumable from storage:

1. references (references.py): each checkpoint alone (and the base, when there is one) is
   evaluated; the checkpoints' scores give the held-in experts, the base's the held-out reference;
2. baselines (baseline_phase.py): uniform average, task arithmetic, TIES, DARE-TIES, greedy soup
   (when the spec asks); 1 and 2 (and the validation of their trials) are units any process may
   take (setup.py);
3. search (search.py): the sampler proposes weights until the budget (n_trials, baselines
   included) is met; validation (validation_phase.py) scores the front on the documents the
   search never saw.

Reference and baseline trials are added with ``study.add_trial`` so that samplers do not mistake
them for their own proposals, but they carry the same parameters as search trials (their
projection into the space) so intersection search spaces stay intact.

Several processes may run ``step()`` on one study (workers sharing a database): ``claim`` is a
lock the caller provides so that "is there budget left? then ask" is atomic across them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager

import optuna

from contract.evaluator import Evaluator
from optimizer import records as R
from optimizer import validation as V
from optimizer.baseline_phase import BaselinesPhase
from optimizer.carry_over import carried_over
from optimizer.events import NullListener, StudyListener, no_lock
from optimizer.progress import Progress, StudyFailed
from optimizer.references import ReferencesPhase
from optimizer.samplers import make_pruner, make_sampler, n_objectives
from optimizer.scorer import TrialScorer
from optimizer.search import SearchPhase
from optimizer.setup import SetupPhase, setup_claims
from optimizer.space import SearchSpace
from optimizer.spec import SpecError, StudySpec
from optimizer.steps import Budget, Step
from optimizer.storage import GRACE_S, HEARTBEAT_S, open_storage
from optimizer.validation_phase import ValidationPhase

__all__ = ["Step", "StudyFailed", "StudyRunner", "open_study"]  # Step, StudyFailed: imported from here too


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
        self.evaluator = evaluator
        self.progress = progress
        self.listener = listener or NullListener()
        self.claim = claim
        self.storage = storage or open_storage(spec.storage)
        self.study, self.spec = open_study(spec, self.storage)
        spec, study = self.spec, self.study
        self.space = SearchSpace(spec.search, spec.weight_names)
        self.prepared = False

        self.reporter = Progress(study, max_failures=spec.search.max_failures)
        self.budget = Budget(study, spec.search.n_trials)
        self.scorer = TrialScorer(evaluator, spec, n_objectives=len(study.directions))
        owner = uuid.uuid4().hex[:12]  # this process, in its claims on shared work
        liveness = {"heartbeat_s": self.heartbeat_s, "grace_s": self.grace_s}
        shared = {"lock": claim, "listener": self.listener, "progress": self.reporter}
        self.validation = ValidationPhase(
            study, spec, evaluator=evaluator, claims=V.Claims(study, owner, **liveness), budget=self.budget, **shared,
        ) if spec.suite.validation else None
        references = ReferencesPhase(study, spec, evaluator, self.scorer)
        baselines = BaselinesPhase(spec, has_base=evaluator.has_base, n_references=len(references.units),
                                   scorer=self.scorer)
        self.setup = SetupPhase(study, references=references, baselines=baselines, validation=self.validation,
                                scorer=self.scorer, space=self.space, claims=setup_claims(study, owner, **liveness),
                                **shared)
        self.search = SearchPhase(study, spec, space=self.space, scorer=self.scorer, budget=self.budget,
                                  validation=self.validation, storage=self.storage, grace_s=self.grace_s, **shared)

    @property
    def heartbeat_s(self) -> float:
        return getattr(self.storage, "heartbeat_interval", None) or HEARTBEAT_S

    @property
    def grace_s(self) -> float:
        return getattr(self.storage, "grace_period", None) or GRACE_S

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
            self.reporter.warn("suite.validation is 0: every reported score is on the documents the search "
                               "optimized on, so the best trials' scores are biased upward")
        dim = len(self.space.distributions())
        self.study.sampler = make_sampler(self.spec.search, self.search.warm_start(), dim=dim)
        self.prepared = True
        return None

    def _setup_step(self) -> Step | None:
        self.search.fail_stale()
        self.reporter.tick("set-up")
        return self.setup.step()

    def budget_done(self) -> bool:
        return self.budget.done()

    def step(self) -> Step:
        """One unit of work once set up: a validation, or claim budget, ask, evaluate, tell."""
        if not self.prepared:
            self.prepare()
        return self.search.step()

    def run(self, poll_s: float = 2.0) -> dict:
        """Run (or resume) the study to its budget in this process; returns the stored front."""
        self.reporter.open(total=self.spec.search.n_trials, desc=self.spec.name, enabled=self.progress)
        try:
            self.prepare()
            while (result := self.step()) is not Step.DONE:
                if result is Step.WAIT:  # trials running elsewhere (or stale, failed after the grace period)
                    self.reporter.tick("waiting for running trials")
                    time.sleep(poll_s)
        finally:
            self.reporter.close()
        return R.stored_front(self.study)


def _jsonable(value):
    return json.loads(json.dumps(value))
