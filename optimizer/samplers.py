"""Sampler registry: spec name -> Optuna sampler. CMA-ES optimizes one scalarized objective;
the others optimize one objective per task."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from optimizer.spec import SearchSpec

SINGLE_OBJECTIVE = {"cmaes"}


def _cmaes(search: SearchSpec, x0: dict[str, float] | None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        # x0/sigma0 are deprecated in Optuna 4.9 (to be moved to OptunaHub) but still honoured;
        # they are how we start at the best baseline with a step wide enough to leave it.
        warnings.simplefilter("ignore")
        return optuna.samplers.CmaEsSampler(
            x0=x0,
            sigma0=search.sigma0,
            seed=search.seed,
            popsize=search.population_size,
            n_startup_trials=0,
            warn_independent_sampling=False,
        )


SAMPLERS: dict[str, Callable[[SearchSpec, dict[str, float] | None], optuna.samplers.BaseSampler]] = {
    "cmaes": _cmaes,
    "nsga2": lambda s, _: optuna.samplers.NSGAIISampler(
        seed=s.seed, population_size=s.population_size or 20
    ),
    "tpe": lambda s, _: optuna.samplers.TPESampler(seed=s.seed, multivariate=True, n_startup_trials=5),
    "gp": lambda s, _: optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=5),
    "random": lambda s, _: optuna.samplers.RandomSampler(seed=s.seed),
}


def make_sampler(search: SearchSpec, x0: dict[str, float] | None = None) -> optuna.samplers.BaseSampler:
    return SAMPLERS[search.sampler](search, x0)


def n_objectives(search: SearchSpec, n_tasks: int) -> int:
    return 1 if search.sampler in SINGLE_OBJECTIVE else n_tasks


def make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
    """Rung i (1-based) of a trial reports the objective on fidelities[i-1] of the documents."""
    rungs = len(search.fidelities)
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=rungs, reduction_factor=2)
    return optuna.pruners.NopPruner()
