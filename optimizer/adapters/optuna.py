"""Optuna internals mergeopt relies on, and nothing else touches. tests/test_adapters.py passes on
Optuna 4.4.0, 4.5.0, 4.9.0, 5.0.0 and 5.1.0 (4.3.0 and older: CmaEsSampler has no _attr_prefix);
pyproject pins that range."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial


def hypervolume(loss_points: np.ndarray, reference: np.ndarray) -> float:
    """The hypervolume of points to be *minimized* below ``reference``.
    Relies on: ``optuna._hypervolume.compute_hypervolume(loss_vals, reference_point)``."""
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(loss_points, reference))


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (a Trial from ask(), or a FrozenTrial).
    Relies on: ``Trial._trial_id`` and ``FrozenTrial._trial_id``."""
    return trial._trial_id


def trials_with_heartbeat(storage: optuna.storages.RDBStorage, trial_ids: list[int]) -> set[int]:
    """Those of ``trial_ids`` that recorded at least one heartbeat.
    Relies on: ``optuna.storages._rdb.models.TrialHeartbeatModel.trial_id`` and
    ``RDBStorage.scoped_session``."""
    from optuna.storages._rdb.models import TrialHeartbeatModel

    with storage.scoped_session() as session:
        query = session.query(TrialHeartbeatModel.trial_id).filter(TrialHeartbeatModel.trial_id.in_(trial_ids))
        return {row[0] for row in query}


def cached_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of the study, not copied, from the study's per-thread cache (what samplers read).
    Relies on: ``Study._get_trials(deepcopy=, use_cache=)``."""
    return study._get_trials(deepcopy=False, use_cache=True)


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """A system attribute on a trial, written from inside a sampler (Trial has no public setter).
    Relies on: ``Study._storage`` and ``trial_id`` above."""
    study._storage.set_trial_system_attr(trial_id(trial), key, value)


# CmaEsSampler: the state a restart changes (RestartingCmaEs in optimizer/ipop.py). Relies on the
# attributes its __init__ sets (_attr_prefix, _popsize, _x0, _sigma0), which every later call reads.

def set_cma_run(sampler: optuna.samplers.CmaEsSampler, *, attr_prefix: str, popsize: int,
                x0: dict[str, float] | None, sigma0: float | None) -> None:
    """Point the sampler at one CMA-ES run: its trial attribute prefix, population, start, step.
    Relies on: ``CmaEsSampler._attr_prefix``, ``._popsize``, ``._x0``, ``._sigma0``."""
    sampler._attr_prefix = attr_prefix
    sampler._popsize = popsize
    sampler._x0 = x0
    sampler._sigma0 = sigma0


def cma_popsize(sampler: optuna.samplers.CmaEsSampler) -> int | None:
    """The population of the current run. Relies on: ``CmaEsSampler._popsize``."""
    return sampler._popsize


def cma_generation_key(sampler: optuna.samplers.CmaEsSampler) -> str:
    """The trial system attribute holding a trial's generation in the current run.
    Relies on: ``CmaEsSampler._attr_key_generation`` (a property)."""
    return sampler._attr_key_generation


def cma_complete_trials(sampler: optuna.samplers.CmaEsSampler, study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials CMA-ES learns from. Relies on: ``CmaEsSampler._get_trials(study)``."""
    return sampler._get_trials(study)


def cma_restored_optimizer(sampler: optuna.samplers.CmaEsSampler, complete: list[FrozenTrial]):
    """A fresh copy of the current run's CMA-ES state, from the trials' attributes (None: none yet).
    Relies on: ``CmaEsSampler._restore_optimizer(completed_trials)``."""
    return sampler._restore_optimizer(complete)
