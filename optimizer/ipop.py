"""CMA-ES sized for the dimension d of the search space, restarted when it stalls.

Sizing (documented in the README; a spec's population_size / sigma0 override it):
- population  lambda = 4 + floor(3 ln d)  (Hansen's default; 4 at d = 1, 7 at d = 3, 13 at
  d = 24): grows slowly, so a budget of tens of trials still holds several generations;
- step        sigma0 = 0.3 * min(1, 2 / sqrt(d))  (a fraction of each parameter's range: Optuna
  runs CMA-ES on [0, 1]^d). A step of N(0, sigma^2 I) has length ~ sigma sqrt(d); past d = 4 the
  step shrinks so that length stays at 0.6 of the range instead of leaving the box in most
  coordinates at once (per-layer spaces have tens of dimensions).

Restarts (IPOP-CMA-ES, Auger & Hansen 2005): when the current run has not improved its best
value for ``patience`` complete generations, or CMA-ES' own stopping tests fire (collapsed step,
flat function history, ill-conditioned covariance), the next run starts with twice the
population. Optuna 5 dropped ``restart_strategy`` (it falls back to no restarts), so the restart
is done here on Optuna's sampler: run k keeps its CMA-ES state under its own trial attribute
prefix (``cma:`` for run 0, as plain CmaEsSampler, then ``cma:rK:``) and every trial records the
run it was proposed in, so a resumed or shared study recomputes the same run from storage.
Run 0 starts at the warm start (the best baseline); run k > 0 starts at the best trial of the
study so far with the full sigma0: in budgets of tens of trials a restart from a random point
(classic IPOP) would throw away what the search found, while the wider step and larger
population are what gets a collapsed search moving again."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optimizer.adapters import optuna as optuna_adapter

RESTART_ATTR = "mergeopt:cma_restart"  # trial system attr: the CMA-ES run that proposed it
START_ATTR = "mergeopt:cma_restart_x0"  # on a run's first trial: where that run starts (JSON)
IMPROVEMENT = 1e-9  # a generation's best must beat the run's best by more than this


def population(d: int) -> int:
    return 4 + math.floor(3 * math.log(max(d, 1)))


def step(d: int) -> float:
    return 0.3 * min(1.0, 2.0 / math.sqrt(max(d, 1)))


class RestartingCmaEs(optuna.samplers.CmaEsSampler):
    """Optuna's CmaEsSampler with IPOP restarts (``restarts=False``: exactly CmaEsSampler)."""

    def __init__(self, *, x0: dict[str, float] | None, sigma0: float, popsize: int, seed: int,
                 restarts: bool, patience: int, max_popsize: int, first_sigma0: float | None = None) -> None:
        with warnings.catch_warnings():
            # x0/sigma0 are deprecated in Optuna 4.9 (to be moved to OptunaHub) but still honoured;
            # they are how we start at the best baseline with a step wide enough to leave it.
            warnings.simplefilter("ignore")
            super().__init__(x0=x0, sigma0=first_sigma0 or sigma0, seed=seed, popsize=popsize, n_startup_trials=0,
                             warn_independent_sampling=False)
        self._first_x0, self._first_popsize = x0, popsize
        self._sigmas = (first_sigma0 or sigma0, sigma0)  # run 0's step, a restart's
        self._restarts, self._patience, self._max_popsize = restarts, patience, max_popsize
        self.run = 0

    def _use(self, run: int, x0: dict[str, float] | None) -> None:
        self.run = run
        optuna_adapter.set_cma_run(self, attr_prefix="cma:" if run == 0 else f"cma:r{run}:",
                                   popsize=min(self._first_popsize * 2**run, self._max_popsize),
                                   x0=self._first_x0 if run == 0 else x0,
                                   sigma0=self._sigmas[0] if run == 0 else self._sigmas[1])

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return super().sample_relative(study, trial, search_space)
        every = optuna_adapter.cached_trials(study)
        run = max((t.system_attrs.get(RESTART_ATTR, 0) for t in every), default=0)
        starts = [t.system_attrs[START_ATTR] for t in every
                  if t.system_attrs.get(RESTART_ATTR) == run and START_ATTR in t.system_attrs]
        self._use(run, json.loads(starts[0]) if starts else None)
        if self._restarts and self._stalled(study):
            x0 = self._incumbent(study, search_space)
            self._use(run + 1, x0)
            optuna_adapter.set_trial_system_attr(study, trial, START_ATTR, json.dumps(x0))
        optuna_adapter.set_trial_system_attr(study, trial, RESTART_ATTR, self.run)
        return super().sample_relative(study, trial, search_space)

    def _stalled(self, study: optuna.Study) -> bool:
        """No better best for ``patience`` complete generations of this run, or CMA-ES says stop."""
        complete = optuna_adapter.cma_complete_trials(self, study)
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        by_generation: dict[int, list[float]] = {}
        key = optuna_adapter.cma_generation_key(self)
        for t in complete:
            if key in t.system_attrs and t.value is not None:
                by_generation.setdefault(t.system_attrs[key], []).append(sign * t.value)
        bests = [max(v) for _, v in sorted(by_generation.items()) if len(v) >= optuna_adapter.cma_popsize(self)]
        if len(bests) > self._patience and max(bests[-self._patience:]) <= max(bests[:-self._patience]) + IMPROVEMENT:
            return True
        optimizer = optuna_adapter.cma_restored_optimizer(self, complete)  # a fresh copy: asking it changes nothing stored
        return optimizer is not None and hasattr(optimizer, "should_stop") and bool(optimizer.should_stop())

    @staticmethod
    def _incumbent(study: optuna.Study, search_space: dict[str, BaseDistribution]) -> dict[str, float] | None:
        """The best complete trial's point (baselines included), where the next run starts."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and all(n in t.params for n in search_space)]
        if not done:
            return None
        pick = max if study.direction == StudyDirection.MAXIMIZE else min
        best = pick(done, key=lambda t: t.value)
        return {n: float(best.params[n]) for n in search_space}
