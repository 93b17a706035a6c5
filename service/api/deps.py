"""FastAPI dependencies: settings, database sessions, bearer-token auth; the /v1 routers' common parts."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.schemas import Problem
from service.db.session import session_factory
from service.settings import Settings

bearer = HTTPBearer(auto_error=False, description="MERGEOPT_TOKENS")


# The dependencies here are async: they are cheap, and a sync one costs every request a hop
# through the thread pool.
async def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


Cfg = Annotated[Settings, Depends(settings_dep)]


def db(settings: Cfg) -> Iterator[Session]:
    with session_factory(settings.database_url)() as session:
        yield session


DB = Annotated[Session, Depends(db)]
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def token_error(scheme: str | None, credentials: str | None, settings: Settings) -> HTTPException | None:
    """Why a request without a valid bearer token is refused (401 none, 403 wrong), or None.
    Also called by guards.py on the raw header, before the body is read."""
    if not scheme or scheme.lower() != "bearer" or not credentials:
        return HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    given = credentials.encode()
    # Constant time, and every token compared, so timing says nothing about which one matched.
    ok = False
    for token in settings.tokens:
        ok |= hmac.compare_digest(given, token.encode())
    return None if ok else HTTPException(403, "invalid token")


def _check(creds: HTTPAuthorizationCredentials | None, settings: Settings) -> None:
    error = token_error(creds.scheme if creds else None, creds.credentials if creds else None, settings)
    if error is not None:
        raise error


async def require_write(creds: Creds, settings: Cfg) -> None:
    _check(creds, settings)


async def require_read(creds: Creds, settings: Cfg) -> None:
    if settings.protect_reads:
        _check(creds, settings)


READ = [Depends(require_read)]
WRITE = [Depends(require_write)]
NOT_MODIFIED = {304: {"description": "Unchanged since the ETag given in If-None-Match"}}


def v1_router() -> APIRouter:
    """The routes of one resource: under /v1, with the 422 body documented."""
    return APIRouter(prefix="/v1", responses={422: {"model": Problem, "description": "Invalid request"}})
