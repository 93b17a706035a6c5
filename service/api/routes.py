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

from optimizer.spec import parse_spec
from service.api import hot_reads
from service.api.deps import DB, Cfg, require_read, require_write
from service.api.downloads import prepared
from service.api.events import MAX_EVENT_ID, open_stream
from service.api.export_gate import client_of, export_gate
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
from service.settings import Settings
from service.studies import registry, views
from service.studies.external import EXTERNAL, adopt_external
from service.studies.paths import PathNotAllowed, guard_path

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
    try:
        return registry.get_row(session, Study, key)
    except registry.NotFound:  # perhaps a `mergeopt run` study not listed yet (rescans throttled as for lists)
        if not adopt_external(session, str(session.get_bind().url.render_as_string(hide_password=False))):
            raise
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
    adopt_external(session, settings.database_url)  # `mergeopt run` studies on this database too, read-only
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
    if row.state == EXTERNAL:
        raise HTTPException(409, f"study '{row.name}' runs outside the service (mergeopt run or another Optuna "
                                 "client): it is read-only here")
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


@router.get("/studies/{key}/events", dependencies=read, response_class=StreamingResponse,
            responses={429: {"model": Problem, "description": "Too many open event streams (in all or from this client)"}})
async def events(
    key: str,
    request: Request,
    follow: bool = True,
    after: int = Query(0, ge=0, le=MAX_EVENT_ID, description="stream events with a larger id"),
    last_event_id: int | None = Header(None, ge=0, le=MAX_EVENT_ID,
                                       description="sent by EventSource on reconnect; wins over ?after="),
):
    # No database session here: a stream lives for hours, a pooled connection must not (events.py).
    return await open_stream(request, key, after=after if last_event_id is None else last_event_id, follow=follow)


def _export(settings: Settings, key: str, number: int, out_dir: Path, out_roots: list[Path]) -> Path:
    """The merge of a completed trial, on the API's CPU (never a worker's device), reading pool
    files only inside the allowed roots and writing only under ``out_roots`` (both checked as
    the files are opened). The database session is closed before the merge: it takes minutes."""
    from evaluators.fileguard import FileRefused, TargetExists
    from evaluators.pool import PoolFileRefused
    from service.db.session import session_factory
    from service.studies.runs import export_trial

    with session_factory(settings.database_url)() as session:
        row = _study(session, key)
    study = views.optuna_study(row, settings.database_url)
    state = next((t.state.name for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if state is None:
        raise HTTPException(404, f"study '{key}' has no trial {number}")
    if state != "COMPLETE":
        raise HTTPException(409, f"trial {number} is {state}, only completed trials are exported")
    try:
        return export_trial(study, parse_spec(row.spec), number, out_dir, progress=False,
                            roots=settings.allowed_roots, out_roots=out_roots, device="cpu")
    except (FileRefused, PoolFileRefused) as exc:
        raise PathNotAllowed(str(exc)) from exc
    except TargetExists as exc:
        raise HTTPException(409, str(exc)) from exc


EXPORT_RESPONSES = {429: {"model": Problem, "description": "Too many exports at once, or from this client this minute"}}


@router.post("/studies/{key}/trials/{number}/export", status_code=201, response_model=ExportOut, dependencies=write,
             responses=EXPORT_RESPONSES)
def export_to_path(key: str, number: int, body: ExportRequest, request: Request, settings: Cfg):
    out = guard_path(body.out_dir, settings.allowed_roots, what="out_dir")
    if out.exists() and not out.is_dir():
        raise HTTPException(409, f"out_dir {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        raise HTTPException(409, f"out_dir {out} exists and is not empty")
    # Checked again where it is written (evaluators/fileguard.py): a link swapped in meanwhile is refused.
    # Capped, not rate-limited: the caller holds a write token.
    with export_gate(request).slot(None):
        path = _export(settings, key, number, out, settings.allowed_roots)
    path = guard_path(path, settings.allowed_roots, what="out_dir")  # the listing stays inside the roots too
    return ExportOut(path=str(path), files=sorted(p.name for p in path.iterdir()))


@router.get("/studies/{key}/trials/{number}/export", dependencies=read, response_class=FileResponse,
            responses=EXPORT_RESPONSES)
def export_archive(key: str, number: int, request: Request, settings: Cfg):
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in f"{key}-trial{number}")
    with export_gate(request).slot(client_of(request)):
        tmp = Path(tempfile.mkdtemp(prefix="mergeopt-export-")).resolve()  # compared with real paths
        try:
            path = _export(settings, key, number, tmp / name, [tmp])
            archive = tmp / f"{name}.tar.gz"
            # Level 1: safetensors floats barely compress, and level 9 costs the CPU minutes per GB.
            with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
                tar.add(path, arcname=name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return prepared(archive, path, tmp, request)  # disk bounded, freed on disconnect or stall (downloads.py)
