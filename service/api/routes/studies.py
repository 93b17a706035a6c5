"""/v1/studies: create, list and read studies; pause, resume and cancel them. Mutations need a
bearer token, reads too when protect_reads is set (deps.py)."""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy import select

from service.api.deps import DB, READ, WRITE, Cfg, v1_router
from service.api.schemas import StudyCreate, StudyOut
from service.db.models import Event, Study
from service.db.transitions import move_state
from service.studies import registry, views
from service.studies.external import EXTERNAL, adopt_external, find_study

router = v1_router()
TRANSITIONS = {
    "pause": ({"queued", "running"}, "paused"),
    "resume": ({"paused"}, "queued"),
    "cancel": ({"queued", "running", "paused"}, "cancelled"),
}


@router.post("/studies", status_code=201, response_model=StudyOut, dependencies=WRITE)
def create_study(body: StudyCreate, session: DB, settings: Cfg):
    row = registry.create_study(session, settings, body)
    return views.study_out(row, settings.database_url)


@router.get("/studies", response_model=list[StudyOut], dependencies=READ)
def list_studies(session: DB, settings: Cfg, state: str | None = None):
    adopt_external(session, settings.database_url)  # `mergeopt run` studies on this database too, read-only
    query = select(Study).order_by(Study.created_at)
    if state:
        query = query.where(Study.state == state)
    return [views.study_out(r, settings.database_url) for r in session.scalars(query)]


@router.get("/studies/{key}", response_model=StudyOut, dependencies=READ)
def get_study(key: str, session: DB, settings: Cfg):
    return views.study_out(find_study(session, key), settings.database_url)


@router.post("/studies/{key}/{action}", response_model=StudyOut, dependencies=WRITE)
def change_state(key: str, action: str, session: DB, settings: Cfg):
    if action not in TRANSITIONS:
        raise HTTPException(404, f"unknown action '{action}' (pause, resume, cancel)")
    row = find_study(session, key)
    if row.state == EXTERNAL:
        raise HTTPException(409, f"study '{row.name}' runs outside the service (mergeopt run or another Optuna "
                                 "client): it is read-only here")
    allowed, target = TRANSITIONS[action]
    if not move_state(session, row.id, target, allowed):  # decided by the database, not by the read above
        session.rollback()
        session.refresh(row)
        raise HTTPException(409, f"cannot {action} a study that is {row.state}")
    session.add(Event(study_id=row.id, type="state", payload={"state": target}))
    session.commit()
    session.refresh(row)
    return views.study_out(row, settings.database_url)
