"""Study state changes are compare-and-set (service/db/transitions.py): a state committed by
one process between another's read and write is never overwritten, on SQLite as on PostgreSQL.
The race seen in issue 23: the API answered a pause, then a worker that had read 'queued'
set the study running."""

from __future__ import annotations

import contextlib

import pytest
from conftest import scratch_pg_database
from sqlalchemy import select

from service.db.migrate import upgrade
from service.db.models import Event, Pool, Study, Suite
from service.db.session import session_factory
from service.db.transitions import move_state


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    with (contextlib.nullcontext(f"sqlite:///{tmp_path}/svc.db") if request.param == "sqlite"
          else scratch_pg_database("transitions")) as url:
        upgrade(url)
        yield url


def _study(sessions) -> str:
    with sessions() as s, s.begin():
        pool = Pool(name="p", base=None, checkpoints=[], fingerprint={})
        suite = Suite(name="s", include_path=None, tasks=[], limit=None, batch_size=1, validation=0.0,
                      include_defaults=True)
        s.add_all([pool, suite])
        s.flush()
        row = Study(name="st", pool_id=pool.id, suite_id=suite.id, spec={}, n_trials=1, state="queued")
        s.add(row)
        s.flush()
        return row.id


def test_a_stale_read_never_overwrites_a_state_committed_since(db_url):
    sessions = session_factory(db_url)
    sid = _study(sessions)
    with sessions() as worker:
        seen = worker.get(Study, sid)
        assert seen.state == "queued"  # the worker's read
        with sessions() as api, api.begin():  # the API's pause, committed after it
            assert move_state(api, sid, "paused", {"queued", "running"})
        # The worker acts on what it read: a read-then-write would set it running now.
        assert not move_state(worker, sid, "running", ("queued",))
        worker.commit()
    with sessions() as s:
        assert s.scalar(select(Study.state).where(Study.id == sid)) == "paused"


def test_a_move_from_an_allowed_state_sets_the_values_and_says_so(db_url):
    sessions = session_factory(db_url)
    sid = _study(sessions)
    with sessions() as s, s.begin():
        assert move_state(s, sid, "failed", ("queued", "running"), error="boom")
    with sessions() as s, s.begin():
        assert not move_state(s, sid, "running", ("queued",))  # failed is not queued
    with sessions() as s:
        row = s.get(Study, sid)
        assert (row.state, row.error) == ("failed", "boom")
        assert s.scalars(select(Event).where(Event.study_id == sid)).all() == []  # callers add events
