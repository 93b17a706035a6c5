"""Alembic environment for mergeopt's tables (prefixed mergeopt_, own version table)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.db.models import Base
from service.settings import get_settings

VERSION_TABLE = "mergeopt_alembic_version"
config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or get_settings().database_url


def include_object(obj, name, type_, reflected, compare_to):
    # Optuna's tables share the database: autogenerate must never touch them.
    return type_ != "table" or name.startswith("mergeopt_")


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                          include_object=include_object, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with create_engine(url).connect() as connection:
        _migrate(connection)


def _migrate(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                      include_object=include_object, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run()
