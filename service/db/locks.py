"""Cross-process locks around "budget left? then ask" for one study.

PostgreSQL: a row lock on the study (SELECT ... FOR UPDATE), held for the milliseconds an ask
takes, serializes workers on any number of machines. SQLite (one machine): an flock on a file
beside the database."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url

from service.db.models import Study
from service.db.session import session_factory


def study_lock(url: str, study_id: str):
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = Path(parsed.database or "mergeopt.db").resolve()
        return lambda: _flock(db.with_name(f"{db.name}.{study_id}.lock"))
    return lambda: _row_lock(url, study_id)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _row_lock(url: str, study_id: str) -> Iterator[None]:
    with session_factory(url)() as session, session.begin():
        session.execute(select(Study.id).where(Study.id == study_id).with_for_update())
        yield
