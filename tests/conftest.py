import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

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
