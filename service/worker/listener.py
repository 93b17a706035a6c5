"""StudyListener writing the service's tables: trial mirror rows and the events the SSE
endpoint streams."""

from __future__ import annotations

import functools
import time

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError

from optimizer.attrs import KIND_SEARCH, T_CANDIDATE, T_KIND, T_LABEL, T_NORM, T_OBJ, T_RAW, T_TIMES
from service.db.models import Event, Trial
from service.db.session import session_factory
from service.worker.errors import clean

# Back-off between attempts, ~2 minutes in all: a restart or failover under load can take far
# longer than a few seconds, and the worker has nothing better to do meanwhile (its trial is
# already told to Optuna; only this record of it is missing).
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0)


def _retried(fn):
    """A database outage (restart, failover) must not lose an event: retry while it lasts."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for delay in (*RETRY_DELAYS, None):
            try:
                return fn(*args, **kwargs)
            except (OperationalError, InterfaceError):  # the connection went away, or was refused
                if delay is None:
                    raise
                time.sleep(delay)

    return wrapper


class DbListener:
    def __init__(self, url: str, study_id: str, worker: str) -> None:
        self.sessions = session_factory(url)
        self.study_id = study_id
        self.worker = worker

    @_retried
    def _upsert(self, number: int, **fields) -> None:
        with self.sessions() as s, s.begin():
            row = s.scalar(select(Trial).where(Trial.study_id == self.study_id, Trial.number == number).with_for_update())
            if row is not None and row.state == fields.get("state") != "RUNNING":
                return  # already recorded (by Worker.record_missed): one event per transition
            if row is None:
                row = Trial(study_id=self.study_id, number=number, state="RUNNING")
                s.add(row)
            for k, v in fields.items():
                setattr(row, k, v)
            event = {"RUNNING": "trial_started", "COMPLETE": "trial_finished", "FAIL": "trial_failed",
                     "PRUNED": "trial_pruned"}[row.state]
            payload = {"trial": number, "label": row.label, "worker": self.worker}
            if row.state in ("COMPLETE", "PRUNED"):
                payload.update(objective=row.objective, normalized=row.normalized)
            if row.state == "FAIL":
                payload["error"] = row.error
            s.add(Event(study_id=self.study_id, type=event, payload=payload))

    def trial_started(self, number: int, label: str, candidate: dict) -> None:
        self._upsert(number, state="RUNNING", label=label, candidate=candidate, worker=self.worker)

    def _result(self, number: int, state: str, row: dict) -> None:
        self._upsert(
            number, state=state, kind=row.get(T_KIND, KIND_SEARCH), label=row.get(T_LABEL, ""),
            candidate=row.get(T_CANDIDATE, {}), raw=row.get(T_RAW, {}), normalized=row.get(T_NORM, {}),
            objective=row.get(T_OBJ), timings=row.get(T_TIMES, {}), worker=self.worker,
        )

    def trial_finished(self, number: int, row: dict) -> None:
        self._result(number, "COMPLETE", row)

    def trial_pruned(self, number: int, row: dict) -> None:
        """Partial scores are kept; a pruned trial never enters the front."""
        self._result(number, "PRUNED", row)

    def trial_failed(self, number: int, error: str) -> None:
        self._upsert(number, state="FAIL", error=clean(error), worker=self.worker)  # storable (errors.py)

    @_retried
    def front_changed(self, front: dict) -> None:
        with self.sessions() as s, s.begin():
            s.add(Event(study_id=self.study_id, type="front_changed",
                        payload={"trials": front["trials"], "hypervolume": front["hypervolume"]}))

    @_retried
    def trial_validated(self, number: int, result: dict) -> None:
        """A trial scored on the validation documents (the reported scores and front changed)."""
        summary, front = result.get("summary") or {}, result.get("front") or {}
        with self.sessions() as s, s.begin():
            s.add(Event(study_id=self.study_id, type="trial_validated", payload={
                "trial": number, "worker": self.worker,
                "error": clean(result["error"]) if result.get("error") else result.get("error"),
                "objective": summary.get("objective"), "validation_front": front.get("trials", []),
            }))
