"""Registering pools, suites and studies: every check the engine would make, done up front, so
bad input is a 4xx with a reason and nothing half-made is stored."""

from __future__ import annotations

from pathlib import Path

import optuna
from sqlalchemy import select
from sqlalchemy.orm import Session

from evaluators.pool.validation import validate_pool
from evaluators.scoring.suite_scorer import check_task_names
from optimizer.loop import open_study
from optimizer.spec import PoolSpec, SuiteSpec, parse_spec
from service.db.models import Pool, Study, Suite
from service.settings import Settings
from service.studies.paths import guard_path, guard_tree


class Conflict(ValueError):
    """The name is taken."""


class NotFound(LookupError):
    pass


def _guard_pool(spec: PoolSpec, roots: list[Path]) -> PoolSpec:
    def one(path: str, what: str) -> str:
        real = guard_path(path, roots, what=what)
        guard_tree(real, roots, what=what)
        return str(real)

    return spec.model_copy(update={
        "base": one(spec.base, "pool.base") if spec.base else None,
        "checkpoints": [c.model_copy(update={"path": one(c.path, f"checkpoint '{c.name}'")}) for c in spec.checkpoints],
    })


def register_pool(session: Session, settings: Settings, name: str, spec: PoolSpec, *, add: bool = True) -> Pool:
    if session.scalar(select(Pool).where(Pool.name == name)):
        raise Conflict(f"a pool named '{name}' exists")
    spec = _guard_pool(spec, settings.allowed_roots)
    # roots: every file is opened through the guard here too (a side file swapped for a link
    # after guard_tree is refused, never read).
    info = validate_pool([(c.name, c.path) for c in spec.checkpoints], spec.base, roots=settings.allowed_roots)
    row = Pool(name=name, base=spec.base, checkpoints=[c.model_dump() for c in spec.checkpoints],
               fingerprint=info.fingerprint())
    if add:
        session.add(row)
        session.flush()  # the caller commits: a study's pool, suite and row land together or not at all
    return row


def register_suite(session: Session, settings: Settings, name: str, spec: SuiteSpec, *, add: bool = True) -> Suite:
    if session.scalar(select(Suite).where(Suite.name == name)):
        raise Conflict(f"a suite named '{name}' exists")
    include = None
    if spec.include_path:
        include = guard_path(spec.include_path, settings.allowed_roots, what="suite.include_path")
        guard_tree(include, settings.allowed_roots, what="suite.include_path")
    # Its task files are read and checked here, and again by the worker before lm-eval uses them.
    check_task_names([t.task for t in spec.tasks], include, roots=settings.allowed_roots,
                     trusted=settings.trusted_task_roots, include_defaults=spec.include_defaults)
    row = Suite(name=name, include_path=str(include) if include else None,
                tasks=[t.model_dump() for t in spec.tasks], limit=spec.limit, batch_size=spec.batch_size,
                validation=spec.validation, include_defaults=spec.include_defaults)
    if add:
        session.add(row)
        session.flush()
    return row


def get_row(session: Session, model, key: str):
    """By id, or by name for the tables that have one."""
    row = session.get(model, key) if not isinstance(key, int) else None
    if row is None and hasattr(model, "name"):
        row = session.scalar(select(model).where(model.name == key))
    if row is None:
        raise NotFound(f"no {model.__name__.lower()} '{key}'")
    return row


def pool_spec(row: Pool) -> PoolSpec:
    return PoolSpec(base=row.base, checkpoints=row.checkpoints)


def suite_spec(row: Suite) -> SuiteSpec:
    return SuiteSpec(include_path=row.include_path, tasks=row.tasks, limit=row.limit, batch_size=row.batch_size,
                     validation=row.validation, include_defaults=row.include_defaults)


def create_study(session: Session, settings: Settings, body) -> Study:
    if session.scalar(select(Study).where(Study.name == body.name)):
        raise Conflict(f"a study named '{body.name}' exists")
    # Nothing is written until everything is validated; SQLite allows one writer, and Optuna
    # writes through its own connection, so our rows are added only after its study exists.
    pool = get_row(session, Pool, body.pool_id) if body.pool_id else register_pool(
        session, settings, f"{body.name}-pool", body.pool, add=False)
    suite = get_row(session, Suite, body.suite_id) if body.suite_id else register_suite(
        session, settings, f"{body.name}-suite", body.suite, add=False)
    spec = parse_spec({
        "name": body.name,
        "pool": pool_spec(pool).model_dump(),
        "suite": suite_spec(suite).model_dump(),
        "search": body.search.model_dump(),
        "storage": settings.database_url,
        "device": body.device,
    })
    storage = optuna.storages.RDBStorage(settings.database_url)
    if body.name in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        raise Conflict(f"an Optuna study named '{body.name}' already exists in this database")
    open_study(spec, storage)
    try:
        for new in (pool, suite):
            if new.id is None or new not in session:
                session.add(new)
        session.flush()
        row = Study(name=body.name, pool_id=pool.id, suite_id=suite.id, spec=spec.model_dump(mode="json", by_alias=True),
                    priority=body.priority, n_trials=spec.search.n_trials, state="queued")
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        optuna.delete_study(study_name=body.name, storage=storage)
        raise
    return row
