"""REST routes under /v1. Mutations need a bearer token; reads too when protect_reads is set."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from optimizer.spec import parse_spec
from service import registry, views
from service.api import hot_reads
from service.api.deps import DB, Cfg, require_read, require_write
from service.api.events import event_stream
from service.api.schemas import (
    ExportOut,
    ExportRequest,
    FrontOut,
    PoolCreate,
    PoolOut,
    Problem,
    StudyCreate,
    StudyOut,
    SuiteCreate,
    SuiteOut,
    TrialOut,
)
from service.db.models import Event, Pool, Study, Suite
from service.paths import guard_path
from service.settings import Settings

router = APIRouter(prefix="/v1", responses={422: {"model": Problem, "description": "Invalid request"}})
read = [Depends(require_read)]
write = [Depends(require_write)]
NOT_MODIFIED = {304: {"description": "Unchanged since the ETag given in If-None-Match"}}
TRANSITIONS = {
    "pause": ({"queued", "running"}, "paused"),
    "resume": ({"paused"}, "queued"),
    "cancel": ({"queued", "running", "paused"}, "cancelled"),
}


def _study(session: Session, key: str) -> Study:
    return registry.get_row(session, Study, key)


@router.post("/pools", status_code=201, response_model=PoolOut, dependencies=write)
def create_pool(body: PoolCreate, session: DB, settings: Cfg):
    row = registry.register_pool(session, settings, body.name, body)
    session.commit()
    return row


@router.get("/pools", response_model=list[PoolOut], dependencies=read)
def list_pools(session: DB):
    return session.scalars(select(Pool).order_by(Pool.created_at)).all()


@router.get("/pools/{key}", response_model=PoolOut, dependencies=read)
def get_pool(key: str, session: DB):
    return registry.get_row(session, Pool, key)


@router.post("/suites", status_code=201, response_model=SuiteOut, dependencies=write)
def create_suite(body: SuiteCreate, session: DB, settings: Cfg):
    row = registry.register_suite(session, settings, body.name, body)
    session.commit()
    return row


@router.get("/suites", response_model=list[SuiteOut], dependencies=read)
def list_suites(session: DB):
    return session.scalars(select(Suite).order_by(Suite.created_at)).all()


@router.get("/suites/{key}", response_model=SuiteOut, dependencies=read)
def get_suite(key: str, session: DB):
    return registry.get_row(session, Suite, key)


@router.post("/studies", status_code=201, response_model=StudyOut, dependencies=write)
def create_study(body: StudyCreate, session: DB, settings: Cfg):
    row = registry.create_study(session, settings, body)
    return views.study_out(row, settings.database_url)


@router.get("/studies", response_model=list[StudyOut], dependencies=read)
def list_studies(session: DB, settings: Cfg, state: str | None = None):
    query = select(Study).order_by(Study.created_at)
    if state:
        query = query.where(Study.state == state)
    return [views.study_out(r, settings.database_url) for r in session.scalars(query)]


@router.get("/studies/{key}", response_model=StudyOut, dependencies=read)
def get_study(key: str, session: DB, settings: Cfg):
    return views.study_out(_study(session, key), settings.database_url)


@router.post("/studies/{key}/{action}", response_model=StudyOut, dependencies=write)
def change_state(key: str, action: str, session: DB, settings: Cfg):
    if action not in TRANSITIONS:
        raise HTTPException(404, f"unknown action '{action}' (pause, resume, cancel)")
    row = _study(session, key)
    allowed, target = TRANSITIONS[action]
    if row.state not in allowed:
        raise HTTPException(409, f"cannot {action} a study that is {row.state}")
    row.state = target
    session.add(Event(study_id=row.id, type="state", payload={"state": target}))
    session.commit()
    return views.study_out(row, settings.database_url)


@router.get("/studies/{key}/trials", response_model=list[TrialOut], dependencies=read, responses=NOT_MODIFIED)
async def list_trials(
    key: str,
    request: Request,
    settings: Cfg,
    state: str | None = Query(None, pattern="^(?i)(complete|running|fail|pruned|waiting)$"),
):
    return await hot_reads.respond(request, settings.database_url, "trials", key, state.upper() if state else None)


@router.get("/studies/{key}/trials/{number}", response_model=TrialOut, dependencies=read)
def get_trial(key: str, number: int, session: DB, settings: Cfg):
    for t in views.trials_out(_study(session, key), settings.database_url):
        if t.number == number:
            return t
    raise HTTPException(404, f"study '{key}' has no trial {number}")


@router.get("/studies/{key}/front", response_model=FrontOut, dependencies=read, responses=NOT_MODIFIED)
async def get_front(
    key: str, request: Request, settings: Cfg,
    split: str = Query("validation", pattern="^(validation|search)$",
                       description="validation: scores on documents the search never saw (what to report); "
                                   "search: the documents the search optimized on (biased upward, for diagnosis)"),
):
    return await hot_reads.respond(request, settings.database_url, "front", key, split)


@router.get("/studies/{key}/events", dependencies=read, response_class=StreamingResponse)
def events(
    key: str,
    session: DB,
    settings: Cfg,
    follow: bool = True,
    after: int = Query(0, ge=0, description="stream events with a larger id"),
    last_event_id: int | None = Header(None, ge=0, description="sent by EventSource on reconnect; wins over ?after="),
):
    row = _study(session, key)
    return StreamingResponse(
        event_stream(settings, row.id, after=after if last_event_id is None else last_event_id, follow=follow),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _export(session: Session, settings: Settings, key: str, number: int, out_dir: Path) -> Path:
    from service.studies import export_trial

    row = _study(session, key)
    study = views.optuna_study(row, settings.database_url)
    state = next((t.state.name for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if state is None:
        raise HTTPException(404, f"study '{key}' has no trial {number}")
    if state != "COMPLETE":
        raise HTTPException(409, f"trial {number} is {state}, only completed trials are exported")
    return export_trial(study, parse_spec(row.spec), number, out_dir, progress=False)


@router.post("/studies/{key}/trials/{number}/export", status_code=201, response_model=ExportOut, dependencies=write)
def export_to_path(key: str, number: int, body: ExportRequest, session: DB, settings: Cfg):
    out = guard_path(body.out_dir, settings.allowed_roots, what="out_dir")
    if out.exists() and any(out.iterdir()):
        raise HTTPException(409, f"out_dir {out} exists and is not empty")
    path = _export(session, settings, key, number, out)
    return ExportOut(path=str(path), files=sorted(p.name for p in path.iterdir()))


@router.get("/studies/{key}/trials/{number}/export", dependencies=read, response_class=FileResponse)
def export_archive(key: str, number: int, session: DB, settings: Cfg):
    tmp = Path(tempfile.mkdtemp(prefix="mergeopt-export-"))
    name = f"{key}-trial{number}"
    try:
        path = _export(session, settings, key, number, tmp / name)
        archive = tmp / f"{name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(path, arcname=name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FileResponse(archive, media_type="application/gzip", filename=archive.name,
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))
