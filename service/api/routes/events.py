"""/v1/studies/{key}/events: a study's events as server-sent events (event_hub.py)."""

from __future__ import annotations

from fastapi import Header, Query, Request
from fastapi.responses import StreamingResponse

from service.api.deps import READ, v1_router
from service.api.event_hub import MAX_EVENT_ID, open_stream
from service.api.schemas import Problem

router = v1_router()


@router.get("/studies/{key}/events", dependencies=READ, response_class=StreamingResponse,
            responses={429: {"model": Problem, "description": "Too many open event streams (in all or from this client)"}})
async def events(
    key: str,
    request: Request,
    follow: bool = True,
    after: int = Query(0, ge=0, le=MAX_EVENT_ID, description="stream events with a larger id"),
    last_event_id: int | None = Header(None, ge=0, le=MAX_EVENT_ID,
                                       description="sent by EventSource on reconnect; wins over ?after="),
):
    # No database session here: a stream lives for hours, a pooled connection must not (event_hub.py).
    return await open_stream(request, key, after=after if last_event_id is None else last_event_id, follow=follow)
