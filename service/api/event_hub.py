"""Server-sent events from the append-only events table (workers may be other processes).

A stream holds no database connection. One hub per app polls, once per ``sse_poll_s``, every
study that has open streams (one short session for all, released at once) and keeps each
study's recent events rendered in memory; its streams are woken when that changes and read from
memory. A stream that starts behind that window (or before its study's feed has been polled once)
pages through the table itself, one short session per page. Open streams are capped in all and
per client address (429 beyond: ``TooManyStreams``)."""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.background import BackgroundTask

from service.api.connections import stream_cap
from service.db.models import Event, Study
from service.db.session import session_factory
from service.settings import Settings
from service.studies import registry

log = logging.getLogger(__name__)
TERMINAL = {"completed", "failed", "cancelled"}
KEEPALIVE_S = 15.0
MAX_EVENT_ID = 2**63 - 1  # SQLite's and PostgreSQL's largest integer
PAGE = 500  # events per query
WINDOW = 2048  # events kept per study: a stream further behind pages from the database

Rows = list[tuple[int, str]]  # (event id, its SSE text)


class TooManyStreams(Exception):
    """More open event streams than MERGEOPT_MAX_STREAMS[_PER_CLIENT] allow (429)."""


def _render(rows) -> Rows:
    return [(i, f"id: {i}\nevent: {t}\ndata: {json.dumps(p)}\n\n") for i, t, p in rows]


def _events_after(s, study_id: str, after: int):
    return s.execute(select(Event.id, Event.type, Event.payload)
                     .where(Event.study_id == study_id, Event.id > after).order_by(Event.id).limit(PAGE)).all()


def _fetch(url: str, study_id: str, after: int) -> tuple[Rows, str | None]:
    """One page from the table, in a session of its own."""
    with session_factory(url)() as s:
        # State first: if it is terminal, every event was committed before it (same transaction).
        state = s.scalar(select(Study.state).where(Study.id == study_id))
        return _render(_events_after(s, study_id, after)), state


def _poll(url: str, last_ids: dict[str, int | None]) -> dict[str, tuple[str | None, Rows, int | None]]:
    """Every watched study in one short session: (state, new events, newest id when first seen)."""
    out = {}
    with session_factory(url)() as s:
        for study_id, last in last_ids.items():
            state = s.scalar(select(Study.state).where(Study.id == study_id))
            if last is None:  # first poll: the window starts at the newest event
                top = s.scalar(select(func.max(Event.id)).where(Event.study_id == study_id)) or 0
                out[study_id] = (state, [], top)
            else:
                out[study_id] = (state, _render(_events_after(s, study_id, last)), None)
    return out


class Feed:
    """A study's recent events as the hub last saw them: complete for ids in (floor, last_id]."""

    def __init__(self) -> None:
        self.floor: int | None = None  # None until the hub's first poll of the study
        self.last_id: int | None = None
        self.state: str | None = None
        self.ids: list[int] = []
        self.texts: list[str] = []
        self.streams = 0
        self.changed = asyncio.Event()

    def since(self, after: int) -> Rows | None:
        """The events after ``after``; None when the window does not reach back that far."""
        if self.floor is None or after < self.floor:
            return None
        i = bisect.bisect_right(self.ids, after)
        return list(zip(self.ids[i:], self.texts[i:], strict=True))

    def update(self, state: str | None, rows: Rows, top: int | None) -> None:
        changed = state != self.state or bool(rows) or top is not None
        self.state = state
        if top is not None:
            self.floor = self.last_id = top
        for i, text in rows:
            self.ids.append(i)
            self.texts.append(text)
            self.last_id = i
        if len(self.ids) > 2 * WINDOW:  # trimmed in halves: amortized O(1) per event
            cut = len(self.ids) - WINDOW
            self.floor = self.ids[cut - 1]
            del self.ids[:cut], self.texts[:cut]
        if changed:
            self.changed.set()
            self.changed = asyncio.Event()


class EventHub:
    """The streams of one app: their caps, and one poll loop for all their studies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.max_streams = stream_cap(settings)  # also within the descriptor limit (connections.py)
        self.open = 0
        self.by_client: Counter[str] = Counter()
        self.feeds: dict[str, Feed] = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ caps
    def acquire(self, client: str) -> Callable[[], None]:
        """A slot for one stream, or TooManyStreams; the returned release may be called twice."""
        if self.by_client[client] >= self.settings.max_streams_per_client:
            raise TooManyStreams(f"too many open event streams from {client} "
                                 f"({self.settings.max_streams_per_client}, MERGEOPT_MAX_STREAMS_PER_CLIENT): close one first")
        if self.open >= self.max_streams:
            fds = "; capped below it by the process's file descriptor limit" \
                if self.max_streams < self.settings.max_streams else ""
            raise TooManyStreams(f"too many open event streams ({self.max_streams}, MERGEOPT_MAX_STREAMS{fds}): "
                                 "retry later")
        self.open += 1
        self.by_client[client] += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.open -= 1
                self.by_client[client] -= 1
                if self.by_client[client] <= 0:
                    del self.by_client[client]

        return release

    def lookup(self, key: str) -> str:
        """The study id of ``key`` (id or name), or NotFound; a short session, in a thread."""
        with session_factory(self.settings.database_url)() as s:
            return registry.get_row(s, Study, key).id

    # ------------------------------------------------------------ feeds
    def _subscribe(self, study_id: str) -> Feed:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a test client without `with`): start afresh
            self._loop, self.feeds, self._task = loop, {}, None
        feed = self.feeds.setdefault(study_id, Feed())
        feed.streams += 1
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return feed

    def _unsubscribe(self, study_id: str, feed: Feed) -> None:
        feed.streams -= 1
        if feed.streams <= 0 and self.feeds.get(study_id) is feed:
            del self.feeds[study_id]

    async def _run(self) -> None:
        while self.feeds:
            await asyncio.sleep(self.settings.sse_poll_s)
            snapshot = {sid: f.last_id for sid, f in self.feeds.items()}
            if not snapshot:
                break
            try:
                seen = await asyncio.to_thread(_poll, self.settings.database_url, snapshot)
            except Exception as exc:  # the database went away: streams wait (and keep alive) meanwhile
                log.warning("event streams: poll failed (%s), retrying", exc)
                continue
            for sid, (state, rows, top) in seen.items():
                feed = self.feeds.get(sid)
                if feed is not None and feed.last_id == snapshot[sid]:  # not replaced meanwhile
                    feed.update(state, rows, top)

    # ------------------------------------------------------------ one stream
    async def stream(self, study_id: str, *, after: int = 0, follow: bool = True) -> AsyncIterator[str]:
        """``id:`` is the event row id, so a client reconnects with ?after=ID and misses nothing.
        With follow, the stream ends once the study is finished and every event was sent."""
        url = self.settings.database_url
        if not follow:  # one read of what is there, fresh from the table
            while True:
                rows, _ = await asyncio.to_thread(_fetch, url, study_id, after)
                if not rows:
                    return
                after = rows[-1][0]
                yield "".join(text for _, text in rows)
        feed = self._subscribe(study_id)
        try:
            sent = time.monotonic()
            while True:
                changed, rows, state = feed.changed, feed.since(after), feed.state
                if rows is None:  # behind the window, or the study not yet polled
                    rows, state = await asyncio.to_thread(_fetch, url, study_id, after)
                if rows:
                    after = rows[-1][0]
                    yield "".join(text for _, text in rows)  # one write for all that is new
                    sent = time.monotonic()
                    continue
                if state in TERMINAL or state is None:
                    return
                try:
                    async with asyncio.timeout(max(0.0, KEEPALIVE_S - (time.monotonic() - sent))):
                        await changed.wait()
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    sent = time.monotonic()
        finally:
            self._unsubscribe(study_id, feed)


async def open_stream(request: Request, key: str, *, after: int, follow: bool) -> StreamingResponse:
    """The response of GET .../events: 404 for an unknown study, 429 past the caps."""
    hub: EventHub = request.app.state.events
    study_id = await asyncio.to_thread(hub.lookup, key)
    client = request.client.host if request.client else "unknown"
    try:
        release = hub.acquire(client)
    except TooManyStreams as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": "5"}) from None

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in hub.stream(study_id, after=after, follow=follow):
                yield chunk
        finally:  # also when the client went away mid-stream (closed or collected)
            release()

    stream = body()

    async def finish() -> None:
        try:
            await stream.aclose()
        finally:
            release()

    return StreamingResponse(stream, media_type="text/event-stream", background=BackgroundTask(finish),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
