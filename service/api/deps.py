"""FastAPI dependencies: settings, database sessions, bearer-token auth."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

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


def _check(creds: HTTPAuthorizationCredentials | None, settings: Settings) -> None:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    given = creds.credentials.encode()
    # Constant time, and every token compared, so timing says nothing about which one matched.
    ok = False
    for token in settings.tokens:
        ok |= hmac.compare_digest(given, token.encode())
    if not ok:
        raise HTTPException(403, "invalid token")


async def require_write(creds: Creds, settings: Cfg) -> None:
    _check(creds, settings)


async def require_read(creds: Creds, settings: Cfg) -> None:
    if settings.protect_reads:
        _check(creds, settings)
