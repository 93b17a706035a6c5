"""Optuna RDB storage with heartbeats, driven from our own ask/tell loop."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import optuna

# Heartbeats are "experimental" in Optuna and "meant for Study.optimize"; we drive them from our
# own ask/tell loop on purpose (see heartbeat()).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

HEARTBEAT_S, GRACE_S = 10, 60


def open_storage(url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> optuna.storages.RDBStorage:
    """Heartbeats let a resumed run (or another worker) fail the trials of a process that died:
    a RUNNING trial whose heartbeat is older than ``grace_s`` is failed by fail_stale_trials."""
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=heartbeat_s,
        grace_period=grace_s,
        engine_kwargs={"pool_pre_ping": True},
    )


def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Callable[[], None]:
    """Record a heartbeat now and every interval from a daemon thread; returns the stop function."""
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or HEARTBEAT_S

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a database blip must not kill the trial; the next beat retries
                pass

    storage.record_heartbeat(trial_id)
    threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}").start()
    return stop.set


def trials_without_heartbeat(storage: optuna.storages.RDBStorage, trial_ids: list[int]) -> set[int]:
    """RUNNING trials that never recorded a heartbeat (their process died between ask and the
    first beat, e.g. when the database went away). Optuna's fail_stale_trials never sees them."""
    if not trial_ids:
        return set()
    from optuna.storages._rdb.models import TrialHeartbeatModel

    with storage.scoped_session() as session:
        beating = {
            row[0]
            for row in session.query(TrialHeartbeatModel.trial_id).filter(TrialHeartbeatModel.trial_id.in_(trial_ids))
        }
    return set(trial_ids) - beating
