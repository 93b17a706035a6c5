"""The reads that dashboards and pipelines poll (a study's front and trials), served as JSON bytes
cached per study version.

A study's version is its newest event id: every change a worker makes to its trials appends an
event, so an unchanged version means an unchanged body. A poll then costs one indexed query (study
key -> id and newest event id together) and no ORM rows, Optuna reads or pydantic work; bodies are
rebuilt once per change, by one request while the others for that study wait for it. Every poll
sees the database as it is (no time-based staleness), and the ETag lets a client skip the body
altogether with If-None-Match."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from fastapi import Request, Response
from pydantic import TypeAdapter
from sqlalchemy import bindparam, func, or_, select
from starlette.concurrency import run_in_threadpool

from service.api.schemas import TrialOut
from service.db.models import Event, Study
from service.db.session import get_engine, session_factory
from service.studies import views
from service.studies.registry import NotFound

_TRIAL = TypeAdapter(TrialOut)
FINISHED = {"COMPLETE", "FAIL", "PRUNED"}  # Optuna refuses changes to a finished trial
MAX_BODIES = 512
MAX_STUDIES_WITH_FRAGMENTS = 64  # ~0.4 kB per finished trial each; least recently rebuilt go first
_KEY = bindparam("key")
# Study key (id or name) -> (id, newest event id): one probe of each index.
_LOOKUP = (
    select(Study.id, select(func.max(Event.id)).where(Event.study_id == Study.id).scalar_subquery())
    .where(or_(Study.id == _KEY, Study.name == _KEY))
    .order_by((Study.id == _KEY).desc())  # an id wins over another study's equal name
    .limit(1)
)


class TrialFragments:
    """Each finished trial's JSON, kept: a study of thousands of trials then re-renders only
    the trials that started or finished since the last body."""

    def __init__(self) -> None:
        self._by_study: dict[str, dict[tuple[int, bool], bytes]] = {}
        self._lock = threading.Lock()  # bodies of one study with different filters render at once

    def render(self, row: Study, url: str, state: str | None) -> bytes:
        with self._lock:
            known = self._by_study.pop(row.id, None) or {}
            self._by_study[row.id] = known  # (re)inserted last: the dict's order is recency
            while len(self._by_study) > MAX_STUDIES_WITH_FRAGMENTS:
                self._by_study.pop(next(iter(self._by_study)))
        parts = []
        for r in views.trial_rows(row, url):
            if state is not None and r.state != state:
                continue
            # A finished trial changes once more: when it is scored on the validation documents.
            key = (r.number, r.validation is not None)
            part = known.get(key)
            if part is None:
                part = _TRIAL.dump_json(TrialOut(**r.to_json()))
                if r.state in FINISHED:
                    known[key] = part
            parts.append(part)
        return b"[" + b",".join(parts) + b"]"


def _render_front(row: Study, url: str, split: str | None) -> bytes:
    return views.front_out(row, url, split or "validation").model_dump_json().encode()


class HotReads:
    def __init__(self, url: str) -> None:
        self.url = url
        self._bodies: dict[tuple[str, str, str | None], tuple[int | None, bytes, str]] = {}
        self._locks: dict[tuple[str, str, str | None], threading.Lock] = {}
        self._guard = threading.Lock()
        self._renderers: dict[str, Callable[[Study, str, str | None], bytes]] = {
            "front": _render_front, "trials": TrialFragments().render,
        }

    def _lookup(self, key: str) -> tuple[str, int | None]:
        with get_engine(self.url).connect() as conn:  # Core, not a Session: this runs on every poll
            found = conn.execute(_LOOKUP, {"key": key}).first()
        if found is None:
            raise NotFound(f"no study '{key}'")
        return found[0], found[1]

    def body(self, kind: str, key: str, state: str | None = None) -> tuple[bytes, str]:
        """(JSON body, ETag) of ``kind`` for study ``key`` as the database has it now."""
        study_id, version = self._lookup(key)
        cache_key = (study_id, kind, state)
        cached = self._bodies.get(cache_key)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1], cached[2]
        with self._guard:
            lock = self._locks.setdefault(cache_key, threading.Lock())
        with lock:  # one rebuild per change and body, however many pollers arrive meanwhile
            study_id, version = self._lookup(key)
            cached = self._bodies.get(cache_key)
            if cached is not None and version is not None and cached[0] == version:
                return cached[1], cached[2]
            with session_factory(self.url)() as s:
                row = s.get(Study, study_id)
                body = self._renderers[kind](row, self.url, state)
            etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
            if len(self._bodies) >= MAX_BODIES:
                self._bodies.clear()
            self._bodies[cache_key] = (version, body, etag)
            return body, etag


_INSTANCES: dict[str, HotReads] = {}


def hot_reads(url: str) -> HotReads:
    found = _INSTANCES.get(url)
    return found if found is not None else _INSTANCES.setdefault(url, HotReads(url))


async def respond(request: Request, url: str, kind: str, key: str, state: str | None = None) -> Response:
    body, etag = await run_in_threadpool(hot_reads(url).body, kind, key, state)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}  # no-cache: revalidate every time, 304 if unchanged
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type="application/json", headers=headers)
