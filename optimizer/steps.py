"""What the study's phases share: the Step a unit of work ends with, and the trial budget."""

from __future__ import annotations

from enum import Enum

import optuna
from optuna.trial import TrialState

from optimizer.records import trials

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # trials that used their budget
CLAIMED = (*DONE, TrialState.RUNNING, TrialState.WAITING)


class Step(Enum):
    RAN = "ran"  # a trial completed
    SETUP = "setup"  # a set-up unit was evaluated (a reference, a baseline, a soup)
    PRUNED = "pruned"  # stopped early on a low-fidelity rung (partial scores kept)
    FAILED = "failed"  # a trial failed (error stored)
    VALIDATED = "validated"  # a front trial was scored on the validation documents
    WAIT = "wait"  # budget claimed by running trials elsewhere
    DONE = "done"  # n_trials completed


class Budget:
    """``n_trials`` counts every trial that used its budget, set-up trials included."""

    def __init__(self, study: optuna.Study, n_trials: int) -> None:
        self.study, self.n_trials = study, n_trials

    def left(self, states: tuple[TrialState, ...] = DONE) -> int:
        """Trials left once those in ``states`` are counted (CLAIMED: running ones too)."""
        return self.n_trials - len(trials(self.study, states))

    def done(self) -> bool:
        return self.left(DONE) <= 0
