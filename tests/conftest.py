import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import contextlib  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

PG_URL = os.environ.get("MERGEOPT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else the reason (tests skip with it)."""
    try:
        import sqlalchemy as sa

        with sa.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect() as conn:
            conn.execute(sa.text("select 1"))
        return None
    except Exception as exc:  # driver missing, server down, auth
        return f"PostgreSQL at {PG_URL} is unreachable: {type(exc).__name__}: {exc}"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """Both embedded SQLite and the real PostgreSQL (skipped with a clear reason if down)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/study.db"
        return
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    yield PG_URL


@pytest.fixture
def study_name():
    return f"t-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def scratch_pg_database(prefix: str):
    """A PostgreSQL database of its own, dropped afterwards (skips if the server is down)."""
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        try:
            with create_engine(PG_URL, isolation_level="AUTOCOMMIT").connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception:  # e.g. the server is restarting: a leftover scratch database is harmless
            pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """For the hostile-input and API-security modules (one per module): a registered pool, suite and (queued) study on SQLite, plus a folder outside the roots."""
    from fastapi.testclient import TestClient
    from servicekit import AUTH, make_assets, settings_for

    from service.api.app import create_app

    root = tmp_path_factory.mktemp("hostile")
    outside = tmp_path_factory.mktemp("outside")
    assets = make_assets(root)
    settings = settings_for(root, f"sqlite:///{root}/hostile.db")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.post("/v1/pools", json={"name": "good", **assets["pool"]}, headers=AUTH).status_code == 201
        assert c.post("/v1/suites", json={"name": "good-suite", **assets["suite"]}, headers=AUTH).status_code == 201
        r = c.post("/v1/studies", json={"name": "kept", **assets, "search": {"n_trials": 12}}, headers=AUTH)
        assert r.status_code == 201, r.text
        yield {"c": c, "root": root, "outside": outside, "a": assets, "settings": settings}
