"""Studies run with `mergeopt run` on the service's database are listed by the API (and so the
dashboard), read-only: scores and front readable, controls refused, never picked by a worker."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from conftest import scratch_pg_database
from fastapi.testclient import TestClient
from servicekit import AUTH, make_assets, settings_for

from optimizer.spec import parse_spec
from service.api.app import create_app
from service.studies.runs import run_study
from service.worker.runtime import Worker

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(request, tmp_path):
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path}/{uuid.uuid4().hex[:8]}.db" if request.param == "sqlite"
               else stack.enter_context(scratch_pg_database("mergeopt_ext")))
        settings = settings_for(tmp_path, url)
        c = stack.enter_context(TestClient(create_app(settings)))  # creates the service's tables
        yield c, settings, make_assets(tmp_path)


def test_a_cli_study_on_the_service_database_is_listed_read_only(setup):
    client, settings, a = setup
    spec = parse_spec({"name": "from-cli", **a, "search": {"n_trials": 11}, "storage": settings.database_url})
    study = run_study(spec, progress=False)
    assert client.get("/v1/studies/from-cli").status_code == 200  # a lookup finds it before any list
    listed = {s["name"]: s for s in client.get("/v1/studies").json()}
    assert set(listed) == {"from-cli"}
    ext = listed["from-cli"]
    assert ext["state"] == "external" and ext["progress"]["completed"] == len(study.trials) == 11
    trials = client.get("/v1/studies/from-cli/trials").json()
    assert [t["number"] for t in trials] == list(range(11))
    front = client.get("/v1/studies/from-cli/front").json()
    assert front["split"] == "validation" and front["front"] and front["verdict"]["text"]
    for action in ("pause", "resume", "cancel"):
        r = client.post(f"/v1/studies/from-cli/{action}", headers=AUTH)
        assert r.status_code == 409 and "read-only" in r.json()["detail"]
    assert Worker(settings, worker_id="w").run_once() is False  # nothing for a worker to do
    assert len(client.get("/v1/studies").json()) == 1  # listed once, however often it is polled
    # A study created over REST next to it is still the service's own.
    assert client.post("/v1/studies", json={"name": "own", **a, "search": {"n_trials": 11}}, headers=AUTH).status_code == 201
    states = {s["name"]: s["state"] for s in client.get("/v1/studies").json()}
    assert states == {"from-cli": "external", "own": "queued"}
