"""Sampler registry: spec name -> Optuna sampler. CMA-ES optimizes one scalarized objective;
the others optimize one objective per task."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from optimizer import ipop
from optimizer.spec import MAX_POPULATION, SearchSpec

SINGLE_OBJECTIVE = {"cmaes"}


def cmaes_sizes(search: SearchSpec, dim: int) -> tuple[int, float]:
    """(population, sigma0) for a space of ``dim`` parameters: the spec's, else ipop's formulas."""
    return search.population_size or ipop.population(dim), search.sigma0 or ipop.step(dim)


def _cmaes(search: SearchSpec, x0: dict[str, float] | None, dim: int) -> optuna.samplers.BaseSampler:
    popsize, sigma0 = cmaes_sizes(search, dim)
    # Warm-started, the first run explores around the best set-up trial with a small step (the
    # default never larger than the cold step); restarts (from the incumbent) take the full step.
    if x0 is None:
        first = sigma0
    else:
        first = search.warm_sigma0 if search.warm_sigma0 is not None else min(search.warm_step, sigma0)
    return ipop.RestartingCmaEs(x0=x0, sigma0=sigma0, first_sigma0=first, popsize=popsize, seed=search.seed,
                                restarts=search.restarts == "ipop", patience=search.restart_patience,
                                max_popsize=MAX_POPULATION)


SAMPLERS: dict[str, Callable[[SearchSpec, dict[str, float] | None, int], optuna.samplers.BaseSampler]] = {
    "cmaes": _cmaes,
    "nsga2": lambda s, _, __: optuna.samplers.NSGAIISampler(
        seed=s.seed, population_size=s.population_size or 20
    ),
    "tpe": lambda s, _, __: optuna.samplers.TPESampler(seed=s.seed, multivariate=True, n_startup_trials=5),
    "gp": lambda s, _, __: optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=5),
    "random": lambda s, _, __: optuna.samplers.RandomSampler(seed=s.seed),
}


def make_sampler(search: SearchSpec, x0: dict[str, float] | None = None, dim: int | None = None,
                 ) -> optuna.samplers.BaseSampler:
    """``dim``: the number of searched parameters (CMA-ES' sizes follow it; default len(x0), else 1)."""
    return SAMPLERS[search.sampler](search, x0, dim or (len(x0) if x0 else 1))


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
