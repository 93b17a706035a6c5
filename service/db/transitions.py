"""Study state changes as compare-and-set: one UPDATE that moves a study only from the states
it may leave. A read-then-write would let a worker that read "queued" overwrite a pause the API
committed in between (SQLite has no row locks to stop it); the database decides instead."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db.models import Study


def move_state(session: Session, study_id: str, target: str, only_from: tuple[str, ...] | set[str], **values) -> bool:
    """Set ``state = target`` (and ``values``) where the study is still in ``only_from``; True if it moved."""
    result = session.execute(
        update(Study).where(Study.id == study_id, Study.state.in_(tuple(only_from))).values(state=target, **values)
    )
    return result.rowcount == 1
