"""Read models: a study row plus its Optuna study, as the API shows them."""

from __future__ import annotations

import functools

import optuna
from sqlalchemy import func, select
from sqlalchemy.orm import object_session

from optimizer import records as R
from optimizer.verdict import study_verdict
from service.api.schemas import Best, FrontOut, Progress, StudyOut, TrialOut
from service.db.models import Event, Study
from service.db.session import session_factory
from service.studies.history import hypervolume_history, recommended_headline
from service.studies.report import front_json


@functools.cache
def _storage(url: str) -> optuna.storages.BaseStorage:
    """One storage per database for the API's lifetime, wrapped the way Optuna wraps its own:
    finished trials never change, so Optuna's cache keeps them between requests and a poll
    only reads the unfinished ones from the database."""
    return optuna.storages.get_storage(optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}))


def optuna_study(row: Study, url: str) -> optuna.Study:
    return optuna.load_study(study_name=row.name, storage=_storage(url))


_SNAPSHOTS: dict[str, tuple[int | None, list[R.TrialRow], dict[str, dict]]] = {}


def _version(row: Study, url: str) -> int | None:
    """Every change a worker makes to a study's trials appends an event (started, finished,
    failed, pruned, front changed): the newest event id versions the study's trials."""
    query = select(func.max(Event.id)).where(Event.study_id == row.id)
    session = object_session(row)
    if session is not None:  # the request's own connection: a second one per request can starve the pool
        return session.scalar(query)
    with session_factory(url)() as s:
        return s.scalar(query)


def snapshot(row: Study, url: str) -> tuple[list[R.TrialRow], dict[str, dict]]:
    """The study's trial rows and stored fronts (by split), re-read from Optuna only when an event says
    something changed (polling clients then cost one indexed query)."""
    version = _version(row, url)
    cached = _SNAPSHOTS.get(row.id)
    if cached is not None and version is not None and cached[0] == version:
        return cached[1], cached[2]
    study = optuna_study(row, url)
    rows, fronts = R.trial_rows(study), {split: R.stored_front(study, split) for split in ("validation", "search")}
    fronts["verdict"] = study_verdict(study, rows)
    # Summaries computed once per version, not per poll (history.py).
    fronts["hv_history"] = hypervolume_history(rows, fronts["search"]["tasks"])
    fronts["recommended"] = recommended_headline(rows, fronts["verdict"])
    if len(_SNAPSHOTS) > 256:
        _SNAPSHOTS.clear()
    _SNAPSHOTS[row.id] = (version, rows, fronts)
    return rows, fronts


def trial_rows(row: Study, url: str) -> list[R.TrialRow]:
    return snapshot(row, url)[0]


def study_out(row: Study, url: str) -> StudyOut:
    rows, fronts = snapshot(row, url)
    front = fronts["validation"]
    done = [r for r in rows if r.state == "COMPLETE"]
    best = max(done, key=lambda r: r.objective if r.objective is not None else float("-inf"), default=None)
    return StudyOut(
        id=row.id, name=row.name, state=row.state, priority=row.priority, pool_id=row.pool_id,
        suite_id=row.suite_id, search=row.spec["search"],
        progress=Progress(
            completed=len(done), running=sum(r.state == "RUNNING" for r in rows),
            failed=sum(r.state == "FAIL" for r in rows), budget=row.n_trials,
        ),
        best=Best(trial=best.number, label=best.label, objective=best.objective, normalized=best.normalized)
        if best is not None and best.objective is not None else None,
        recommended=fronts.get("recommended"),
        hypervolume=front.get("hypervolume", 0.0), error=row.error,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def trials_out(row: Study, url: str, state: str | None = None) -> list[TrialOut]:
    rows = trial_rows(row, url)
    return [TrialOut(**r.to_json()) for r in rows if state is None or r.state == state.upper()]


def front_out(row: Study, url: str, split: str = "validation") -> FrontOut:
    rows, fronts = snapshot(row, url)
    return FrontOut(**front_json(rows, fronts[split], verdict=fronts.get("verdict")),
                    hypervolume_history=fronts.get("hv_history", []))
