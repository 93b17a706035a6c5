"""Studies that run outside the service (``mergeopt run`` or any Optuna client with a mergeopt
spec) on the service's own database: the API and the dashboard list them too, read-only.

Each is given a study row (state ``external``, with a pool and a suite row built from its stored
spec) the first time a list or lookup sees it. Workers only pick queued or running studies, and
pause/resume/cancel refuse external ones, so the service never touches their trials."""

from __future__ import annotations

import logging
import threading
import time

import optuna
from sqlalchemy import select
from sqlalchemy.orm import Session

from optimizer.carry_over import stored_spec
from optimizer.records import A_SPEC
from service.db.models import Pool, Study, Suite
from service.studies import registry
from service.studies.views import _storage

log = logging.getLogger(__name__)
EXTERNAL = "external"
RESCAN_S = 5.0  # lists are polled: look for new Optuna studies at most this often per database
_last: dict[str, float] = {}
_lock = threading.Lock()


def _free_name(session: Session, model, name: str) -> str:
    taken = set(session.scalars(select(model.name).where(model.name.like(f"{name}%"))))
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _adopt(session: Session, summary: optuna.study.StudySummary) -> Study | None:
    try:
        spec = stored_spec(summary.user_attrs)
    except Exception as exc:  # a spec this version cannot read: list nothing rather than fail the list
        log.warning("not listing Optuna study %r: its mergeopt spec does not parse (%s)", summary.study_name, exc)
        return None
    name = summary.study_name[:64]
    pool = Pool(name=_free_name(session, Pool, f"{name}-pool"[:56]), base=spec.pool.base,
                checkpoints=[c.model_dump() for c in spec.pool.checkpoints], fingerprint={"external": True})
    suite = Suite(name=_free_name(session, Suite, f"{name}-suite"[:56]), include_path=spec.suite.include_path,
                  tasks=[t.model_dump() for t in spec.suite.tasks], limit=spec.suite.limit,
                  batch_size=spec.suite.batch_size, validation=spec.suite.validation,
                  include_defaults=spec.suite.include_defaults)
    session.add_all([pool, suite])
    session.flush()
    row = Study(name=name, pool_id=pool.id, suite_id=suite.id, spec=spec.model_dump(mode="json", by_alias=True),
                priority=0, n_trials=spec.search.n_trials, state=EXTERNAL, prepared=True)
    session.add(row)
    session.flush()
    return row


def adopt_external(session: Session, url: str) -> int:
    """Give every mergeopt study in this database's Optuna storage that has no study row one;
    returns how many were added. Throttled per database: lists are polled, and a lookup of an
    unknown name must not cost a scan of every study each time."""
    now = time.monotonic()
    with _lock:
        if now - _last.get(url, -RESCAN_S) < RESCAN_S:
            return 0
        _last[url] = now
    summaries = optuna.get_all_study_summaries(_storage(url), include_best_trial=False)
    known = set(session.scalars(select(Study.name)))
    added = 0
    for summary in summaries:
        if summary.study_name in known or A_SPEC not in summary.user_attrs or len(summary.study_name) > 64:
            continue
        try:
            if _adopt(session, summary) is not None:
                session.commit()
                added += 1
        except Exception:  # another API process adopted it at the same moment (unique name): theirs stands
            session.rollback()
    return added


def find_study(session: Session, key: str) -> Study:
    """The study row of ``key`` (id or name); perhaps a `mergeopt run` study not listed yet (the
    rescan throttled as for lists); NotFound otherwise."""
    try:
        return registry.get_row(session, Study, key)
    except registry.NotFound:
        if not adopt_external(session, str(session.get_bind().url.render_as_string(hide_password=False))):
            raise
        return registry.get_row(session, Study, key)
