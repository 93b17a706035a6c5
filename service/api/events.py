"""Server-sent events from the append-only events table (workers may be other processes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sqlalchemy import select

from service.db.models import Event, Study
from service.db.session import session_factory
from service.settings import Settings

TERMINAL = {"completed", "failed", "cancelled"}
KEEPALIVE_S = 15.0


def _fetch(settings: Settings, study_id: str, after: int) -> tuple[list[Event], str | None]:
    with session_factory(settings.database_url)() as s:
        # State first: if it is terminal, every event was committed before it (same transaction).
        study = s.get(Study, study_id)
        state = study.state if study else None
        rows = s.scalars(select(Event).where(Event.study_id == study_id, Event.id > after).order_by(Event.id).limit(500)).all()
        return list(rows), state


async def event_stream(settings: Settings, study_id: str, *, after: int = 0, follow: bool = True) -> AsyncIterator[str]:
    """``id:`` is the event row id, so a client reconnects with ?after=ID and misses nothing.
    With follow, the stream ends once the study is finished and every event was sent."""
    idle = 0.0
    while True:
        rows, state = await asyncio.to_thread(_fetch, settings, study_id, after)
        for ev in rows:
            after = ev.id
            yield f"id: {ev.id}\nevent: {ev.type}\ndata: {json.dumps(ev.payload)}\n\n"
        if rows:
            idle = 0.0
            continue
        if not follow or state in TERMINAL or state is None:
            return
        await asyncio.sleep(settings.sse_poll_s)
        idle += settings.sse_poll_s
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
