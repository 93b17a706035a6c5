"""/v1/pools: checkpoint pools, registered once and shared by studies."""

from __future__ import annotations

from sqlalchemy import select

from service.api.deps import DB, READ, WRITE, Cfg, v1_router
from service.api.schemas import PoolCreate, PoolOut
from service.db.models import Pool
from service.studies import registry

router = v1_router()


@router.post("/pools", status_code=201, response_model=PoolOut, dependencies=WRITE)
def create_pool(body: PoolCreate, session: DB, settings: Cfg):
    row = registry.register_pool(session, settings, body.name, body)
    session.commit()
    return row


@router.get("/pools", response_model=list[PoolOut], dependencies=READ)
def list_pools(session: DB):
    return session.scalars(select(Pool).order_by(Pool.created_at)).all()


@router.get("/pools/{key}", response_model=PoolOut, dependencies=READ)
def get_pool(key: str, session: DB):
    return registry.get_row(session, Pool, key)
