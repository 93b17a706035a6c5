"""/v1/suites: task suites, registered once and shared by studies."""

from __future__ import annotations

from sqlalchemy import select

from service.api.deps import DB, READ, WRITE, Cfg, v1_router
from service.api.schemas import SuiteCreate, SuiteOut
from service.db.models import Suite
from service.studies import registry

router = v1_router()


@router.post("/suites", status_code=201, response_model=SuiteOut, dependencies=WRITE)
def create_suite(body: SuiteCreate, session: DB, settings: Cfg):
    row = registry.register_suite(session, settings, body.name, body)
    session.commit()
    return row


@router.get("/suites", response_model=list[SuiteOut], dependencies=READ)
def list_suites(session: DB):
    return session.scalars(select(Suite).order_by(Suite.created_at)).all()


@router.get("/suites/{key}", response_model=SuiteOut, dependencies=READ)
def get_suite(key: str, session: DB):
    return registry.get_row(session, Suite, key)
