"""Alembic: upgrade from empty and downgrade, on SQLite and on a scratch PostgreSQL database."""


import pytest
from conftest import scratch_pg_database
from sqlalchemy import create_engine, inspect

from service.db import migrate
from service.db.models import Base

TABLES = {t.name for t in Base.metadata.sorted_tables}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/mig.db"
        return
    with scratch_pg_database("mergeopt_mig") as url:
        yield url


def tables(url):
    return set(inspect(create_engine(url)).get_table_names())


def test_upgrade_from_empty_then_downgrade(empty_db):
    assert migrate.current(empty_db) is None
    migrate.upgrade(empty_db)
    assert migrate.current(empty_db) == "0004"
    assert TABLES <= tables(empty_db)
    migrate.upgrade(empty_db)  # idempotent
    migrate.downgrade(empty_db)
    assert migrate.current(empty_db) is None
    assert not TABLES & tables(empty_db)
    migrate.upgrade(empty_db)
    assert TABLES <= tables(empty_db)


def test_migrations_match_the_models(empty_db):
    """No drift between models and migrations: autogenerate finds nothing to add."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrate.upgrade(empty_db)
    with create_engine(empty_db).connect() as conn:
        ours = lambda o, n, t, r, c: t != "table" or (n.startswith("mergeopt_") and n != "mergeopt_alembic_version")  # noqa: E731
        ctx = MigrationContext.configure(conn, opts={"include_object": ours})
        diff = [d for d in compare_metadata(ctx, Base.metadata)]
    assert diff == []


def test_optuna_tables_coexist(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/both.db"
    optuna.create_study(storage=url, study_name="s")
    migrate.upgrade(url)
    names = tables(url)
    assert TABLES <= names and {"studies", "trials", "alembic_version"} <= names
    migrate.downgrade(url)
    assert {"studies", "trials"} <= tables(url)  # Optuna's tables are never touched
