"""What the study runner (loop.py) and its phases (setup.py, validation_phase.py) share: the Step
a unit of work ends with, and PhaseHost, the runner's surface the phases use. The phases import
this module, never loop.py, so the runner imports its phases without an import cycle."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from enum import Enum
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimizer.candidate import Candidate, Evaluator
from optimizer.events import StudyListener
from optimizer.space import SearchSpace
from optimizer.spec import StudySpec, TaskSpec


class Step(Enum):
    RAN = "ran"  # a trial completed
    SETUP = "setup"  # a set-up unit was evaluated (a reference, a baseline, a soup)
    PRUNED = "pruned"  # stopped early on a low-fidelity rung (partial scores kept)
    FAILED = "failed"  # a trial failed (error stored)
    VALIDATED = "validated"  # a front trial was scored on the validation documents
    WAIT = "wait"  # budget claimed by running trials elsewhere
    DONE = "done"  # n_trials completed


class PhaseHost(Protocol):
    """The study runner as its phases see it (StudyRunner implements it)."""

    spec: StudySpec
    study: optuna.Study
    evaluator: Evaluator
    listener: StudyListener
    space: SearchSpace
    tasks: list[TaskSpec]
    task_names: list[str]
    claim: Callable[[], AbstractContextManager]
    validation: Any  # the ValidationPhase, or None when the suite has no validation split
    directions: dict[str, bool]  # set by set-up once the references are in
    dens: dict  # normalization denominators, set by set-up once the references are in

    @property
    def heartbeat_s(self) -> float: ...

    @property
    def grace_s(self) -> float: ...

    def rows(self, states: tuple[TrialState, ...] = ...) -> list[FrozenTrial]: ...

    def evaluate(self, cand: Candidate, fidelity: float = 1.0) -> tuple[dict[str, float], dict[str, float]]: ...

    def scored(self, raw: dict[str, float]) -> tuple[dict[str, float], list[float], float]: ...

    def trial_attrs(self, cand: Candidate, kind: str, label: str, raw: dict, norm: dict, obj: float,
                    timings: dict) -> dict: ...

    def budget_done(self) -> bool: ...

    def fail_note(self, message: str) -> None: ...

    def note(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def tick(self, note: str) -> None: ...
