"""Engine and sessions; migrations are applied on start (alembic, see service/db/migrate.py)."""

from __future__ import annotations

import functools

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


@functools.cache
def get_engine(url: str) -> Engine:
    # The API serves up to 40 requests at once (FastAPI's thread pool): with the default 5 kept
    # connections, bursts opened and closed overflow connections per request (for SQLite a
    # connect + PRAGMAs each, for PostgreSQL a new backend). Connections open lazily, so a
    # worker process still holds only the few it uses.
    kwargs: dict = {"pool_size": 20, "max_overflow": 20}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:  # a server can restart under us; a file cannot go away between queries
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _):  # concurrent readers while a worker writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)
