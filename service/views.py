"""Read models: a study row plus its Optuna study, as the API shows them."""

from __future__ import annotations

import functools

import optuna

from optimizer import records as R
from service.api.schemas import Best, FrontOut, Progress, StudyOut, TrialOut
from service.db.models import Study
from service.report import front_json


@functools.cache
def _storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def optuna_study(row: Study, url: str) -> optuna.Study:
    return optuna.load_study(study_name=row.name, storage=_storage(url))


def trial_rows(row: Study, url: str) -> list[R.TrialRow]:
    return R.trial_rows(optuna_study(row, url))


def study_out(row: Study, url: str) -> StudyOut:
    study = optuna_study(row, url)
    rows = R.trial_rows(study)
    done = [r for r in rows if r.state == "COMPLETE"]
    best = max(done, key=lambda r: r.objective if r.objective is not None else float("-inf"), default=None)
    front = study.user_attrs.get(R.A_FRONT) or {}
    return StudyOut(
        id=row.id, name=row.name, state=row.state, priority=row.priority, pool_id=row.pool_id,
        suite_id=row.suite_id, search=row.spec["search"],
        progress=Progress(
            completed=len(done), running=sum(r.state == "RUNNING" for r in rows),
            failed=sum(r.state == "FAIL" for r in rows), budget=row.n_trials,
        ),
        best=Best(trial=best.number, label=best.label, objective=best.objective, normalized=best.normalized)
        if best is not None and best.objective is not None else None,
        hypervolume=front.get("hypervolume", 0.0), error=row.error,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def trials_out(row: Study, url: str, state: str | None = None) -> list[TrialOut]:
    rows = trial_rows(row, url)
    return [TrialOut(**r.to_json()) for r in rows if state is None or r.state == state.upper()]


def front_out(row: Study, url: str) -> FrontOut:
    study = optuna_study(row, url)
    rows = R.trial_rows(study)
    tasks = [t["task"] for t in row.spec["suite"]["tasks"]]
    front = study.user_attrs.get(R.A_FRONT) or R.compute_front(rows, tasks)
    return FrontOut(**front_json(rows, front))
