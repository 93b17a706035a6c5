"""`mergeopt db upgrade|downgrade|current`: alembic on mergeopt's own tables."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config

VERSION_TABLE = "mergeopt_alembic_version"


def migrations_dir() -> Path:
    """The migrations shipped in the package (service/db/migrations): found the same way in a
    checkout, an editable install and a wheel; no alembic.ini needed."""
    return Path(str(resources.files("service.db.migrations")))


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["url"] = url
    return cfg


MIGRATION_LOCK = 0x6D657267  # pg_advisory_lock key


def upgrade(url: str, revision: str = "head") -> None:
    """Applied on every start, one process at a time, Optuna's tables included: the API and
    several workers starting together on an empty database race to create the same tables."""
    import optuna

    with _one_at_a_time(url):
        command.upgrade(alembic_config(url), revision)
        optuna.storages.RDBStorage(url).engine.dispose()


@contextlib.contextmanager
def _one_at_a_time(url: str) -> Iterator[None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from service.db.locks import _flock

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            yield
            return
        db = Path(parsed.database).resolve()
        with _flock(db.with_name(f"{db.name}.migrate.lock")):
            yield
        return
    if parsed.get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    with engine.connect() as conn:
        if not inspect(conn).has_table("mergeopt_alembic_version"):
            return None
        return conn.execute(text("select version_num from mergeopt_alembic_version")).scalar()
