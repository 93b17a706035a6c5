"""/v1/studies/{key}/trials and /front: a study's trials and its Pareto front. The list and the
front are polled: served from hot_reads.py's cache with an ETag."""

from __future__ import annotations

from fastapi import HTTPException, Query, Request

from service.api import hot_reads
from service.api.deps import DB, NOT_MODIFIED, READ, Cfg, v1_router
from service.api.schemas import FrontOut, TrialOut
from service.studies import views
from service.studies.external import find_study

router = v1_router()


@router.get("/studies/{key}/trials", response_model=list[TrialOut], dependencies=READ, responses=NOT_MODIFIED)
async def list_trials(
    key: str,
    request: Request,
    settings: Cfg,
    state: str | None = Query(None, pattern="^(?i)(complete|running|fail|pruned|waiting)$"),
):
    return await hot_reads.respond(request, settings.database_url, "trials", key, state.upper() if state else None)


@router.get("/studies/{key}/trials/{number}", response_model=TrialOut, dependencies=READ)
def get_trial(key: str, number: int, session: DB, settings: Cfg):
    for t in views.trials_out(find_study(session, key), settings.database_url):
        if t.number == number:
            return t
    raise HTTPException(404, f"study '{key}' has no trial {number}")


@router.get("/studies/{key}/front", response_model=FrontOut, dependencies=READ, responses=NOT_MODIFIED)
async def get_front(
    key: str, request: Request, settings: Cfg,
    split: str = Query("validation", pattern="^(validation|search)$",
                       description="validation: scores on documents the search never saw (what to report); "
                                   "search: the documents the search optimized on (biased upward, for diagnosis)"),
):
    return await hot_reads.respond(request, settings.database_url, "front", key, split)
