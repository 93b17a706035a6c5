"""The REST flow with FastAPI's test client and an in-thread worker, plus every 4xx path."""

import contextlib
import io
import json
import tarfile
import threading
import time
import uuid

import optuna
import pytest
from conftest import scratch_pg_database
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from servicekit import AUTH, check_front_consistent, make_assets, parse_sse, settings_for

from service.api.app import create_app
from service.api.schemas import TrialOut
from service.db.models import Event, Study
from service.db.session import session_factory
from service.studies import registry, views
from service.worker.runtime import Worker


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return root, make_assets(root)


@pytest.fixture(scope="module")
def client(assets):
    root, _ = assets
    settings = settings_for(root, f"sqlite:///{root}/api.db")
    with TestClient(create_app(settings)) as c:
        c.settings = settings
        yield c


def test_full_flow(client, assets):
    root, a = assets
    r = client.post("/v1/pools", json={"name": "tiny", **a["pool"]}, headers=AUTH)
    assert r.status_code == 201, r.text
    pool = r.json()
    assert pool["fingerprint"]["checkpoints"] == ["ckpt0", "ckpt1", "ckpt2"] and pool["fingerprint"]["n_params"] > 0
    r = client.post("/v1/suites", json={"name": "tiny-suite", **a["suite"]}, headers=AUTH)
    assert r.status_code == 201, r.text
    body = {"name": "flow", "pool_id": pool["id"], "suite_id": r.json()["id"], "search": {"n_trials": 12, "method": "ties"}}
    r = client.post("/v1/studies", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    study = r.json()
    assert study["state"] == "queued" and study["progress"]["budget"] == 12

    worker = Worker(client.settings, worker_id="w1")
    worker.run_forever(max_idle_s=1.0)
    got = client.get(f"/v1/studies/{study['id']}").json()
    assert got["state"] == "completed" and got["progress"]["completed"] == 12
    assert got["best"]["objective"] > 0 and got["hypervolume"] > 0

    trials = client.get(f"/v1/studies/{study['id']}/trials").json()
    assert len(trials) == 12 and all(t["state"] == "COMPLETE" for t in trials)
    assert {t["label"] for t in trials} >= {"checkpoint:ckpt0", "uniform", "ties", "dare_ties"}
    assert client.get("/v1/studies/flow/trials", params={"state": "fail"}).json() == []
    front = client.get("/v1/studies/flow/front").json()
    check_front_consistent(front, trials)
    assert front["split"] == "validation" and front["verdict"]["text"].startswith("verdict on validation documents")
    assert front["hypervolume_skips"] == [] or set(front["hypervolume_skips"]) < set(front["tasks"])
    assert all(e["intervals"]["objective"]["lo"] <= e["objective"] <= e["intervals"]["objective"]["hi"] for e in front["front"])
    search_front = client.get("/v1/studies/flow/front", params={"split": "search"}).json()
    assert search_front["split"] == "search" and search_front["verdict"] is None
    check_front_consistent(search_front, trials)
    assert client.get("/v1/studies/flow/front", params={"split": "train"}).status_code == 422

    events = parse_sse(client.get("/v1/studies/flow/events").text)  # ends: the study is finished
    types = [e["type"] for e in events]
    assert types.count("trial_finished") == 12 and "front_changed" in types and types[-1] == "state"
    assert events[-1]["data"]["state"] == "completed"
    later = parse_sse(client.get("/v1/studies/flow/events", params={"after": events[5]["id"]}).text)
    assert [e["id"] for e in later] == [e["id"] for e in events[6:]]
    # EventSource reconnects with a Last-Event-ID header (not ?after=): no replay either.
    resumed = parse_sse(client.get("/v1/studies/flow/events", headers={"Last-Event-ID": str(events[5]["id"])}).text)
    assert [e["id"] for e in resumed] == [e["id"] for e in events[6:]]
    assert client.get("/v1/studies/flow/events", headers={"Last-Event-ID": "x"}).status_code == 422

    best = front["front"][0]["trial"]
    r = client.post(f"/v1/studies/flow/trials/{best}/export", json={"out_dir": str(root / "exported")}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert {"model.safetensors", "config.json", "mergekit_config.yml", "tokenizer.json"} <= set(r.json()["files"])
    r = client.get(f"/v1/studies/flow/trials/{best}/export")
    assert r.status_code == 200
    names = tarfile.open(fileobj=io.BytesIO(r.content)).getnames()
    assert f"flow-trial{best}/model.safetensors" in names


def test_pause_resume_cancel(client, assets):
    _, a = assets
    r = client.post("/v1/studies", json={"name": "ctl", **a, "search": {"n_trials": 12}}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert client.post("/v1/studies/ctl/pause", headers=AUTH).json()["state"] == "paused"
    w = Worker(client.settings, worker_id="w2")
    assert w.run_once() is False  # a paused study is not picked
    assert client.post("/v1/studies/ctl/pause", headers=AUTH).status_code == 409
    assert client.post("/v1/studies/ctl/resume", headers=AUTH).json()["state"] == "queued"
    assert w.run_once() is True  # setup (references, baselines) and a first trial
    assert client.get("/v1/studies/ctl").json()["state"] == "running"
    assert client.post("/v1/studies/ctl/cancel", headers=AUTH).json()["state"] == "cancelled"
    done = client.get("/v1/studies/ctl").json()["progress"]["completed"]
    assert w.run_once() is False
    assert client.get("/v1/studies/ctl").json()["progress"]["completed"] == done
    assert client.post("/v1/studies/ctl/resume", headers=AUTH).status_code == 409
    assert client.post("/v1/studies/ctl/explode", headers=AUTH).status_code == 404


def _from_scratch(settings, key: str) -> list[dict]:
    """/trials rendered without any of the polling caches: what the API must agree with."""
    with session_factory(settings.database_url)() as s:
        row = registry.get_row(s, Study, key)
        views._SNAPSHOTS.pop(row.id, None)
        return json.loads(TypeAdapter(list[TrialOut]).dump_json(views.trials_out(row, settings.database_url)))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_client(request, assets):
    """A fresh API on embedded SQLite and on the real PostgreSQL (a database of its own)."""
    root, _ = assets
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{root}/{uuid.uuid4().hex[:8]}.db" if request.param == "sqlite"
               else stack.enter_context(scratch_pg_database("mergeopt_api")))
        settings = settings_for(root, url)
        c = stack.enter_context(TestClient(create_app(settings)))
        c.settings = settings
        yield c


def test_polled_reads_are_fresh_and_revalidate_with_etags(any_client, assets):
    client, (_, a) = any_client, assets
    assert client.post("/v1/studies", json={"name": "poll", **a, "search": {"n_trials": 14}}, headers=AUTH).status_code == 201
    first = client.get("/v1/studies/poll/trials")
    assert first.status_code == 200 and first.json() == [] and first.headers["etag"]
    same = client.get("/v1/studies/poll/trials", headers={"If-None-Match": first.headers["etag"]})
    assert same.status_code == 304 and same.content == b""

    w = Worker(client.settings, worker_id="poller")
    seen = []
    for _ in range(3):  # setup + a first trial, then one trial a call: every poll sees the change
        assert w.run_once() is True
        r = client.get("/v1/studies/poll/trials", headers={"If-None-Match": first.headers["etag"]})
        assert r.status_code == 200 and r.headers["etag"] not in seen
        seen.append(r.headers["etag"])
        assert r.json() == _from_scratch(client.settings, "poll")
        front = client.get("/v1/studies/poll/front")
        assert client.get("/v1/studies/poll/front", headers={"If-None-Match": front.headers["etag"]}).status_code == 304
    # A trial that is running when polled, then finishes: its finished form is what polls show.
    with session_factory(client.settings.database_url)() as s:
        row = registry.get_row(s, Study, "poll")
        study = views.optuna_study(row, client.settings.database_url)
        trial = study.ask()
        s.add(Event(study_id=row.id, type="trial_started", payload={"trial": trial.number}))  # as a worker does
        s.commit()
        assert client.get("/v1/studies/poll/trials").json()[-1]["state"] == "RUNNING"
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        s.add(Event(study_id=row.id, type="trial_failed", payload={"trial": trial.number}))
        s.commit()
    assert client.get("/v1/studies/poll/trials").json()[-1]["state"] == "FAIL"
    assert client.get("/v1/studies/poll/trials").json() == _from_scratch(client.settings, "poll")
    w.run_forever(max_idle_s=1.0)
    final = client.get("/v1/studies/poll/trials", params={"state": "complete"}).json()
    assert len(final) == 14  # cached finished trials agree with a fresh render:
    assert [t for t in _from_scratch(client.settings, "poll") if t["state"] == "COMPLETE"] == final
    assert client.get("/v1/studies/poll/trials").json() == _from_scratch(client.settings, "poll")
    check_front_consistent(client.get("/v1/studies/poll/front").json(), final)


def test_a_finished_trial_whose_event_was_lost_is_recorded_once(client, assets):
    _, a = assets
    assert client.post("/v1/studies", json={"name": "lost", **a, "search": {"n_trials": 14}}, headers=AUTH).status_code == 201
    w = Worker(client.settings, worker_id="recorder")
    assert w.run_once() is True  # setup + a first trial
    study = w.runner.study
    trial = study.ask()  # told to Optuna, but the database went away before its event was written
    for key, value in {"kind": "search", "label": f"trial {trial.number}", "objective": 0.5}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [0.5] if len(study.directions) == 1 else [0.5] * len(study.directions))

    def finished_events():
        return [e for e in parse_sse(client.get("/v1/studies/lost/events", params={"follow": "false"}).text)
                if e["type"] == "trial_finished" and e["data"]["trial"] == trial.number]

    assert finished_events() == []
    assert w.record_missed(w.runner, min_age_s=3600) == 1  # too recent: left to the worker writing it
    assert finished_events() == []
    assert w.record_missed(w.runner, min_age_s=0) == 0
    assert len(finished_events()) == 1
    w.runner.listener.trial_finished(trial.number, {"label": "late duplicate"})  # the original writer, late
    assert w.record_missed(w.runner, min_age_s=0) == 0
    assert len(finished_events()) == 1  # one event per transition
    states = {t["number"]: t["state"] for t in client.get("/v1/studies/lost/trials").json()}
    assert states[trial.number] == "COMPLETE"
    assert client.post("/v1/studies/lost/cancel", headers=AUTH).status_code == 200


def test_exit_when_idle_waits_for_another_workers_setup(client, assets):
    _, a = assets
    r = client.post("/v1/studies", json={"name": "setup-wait", **a, "search": {"n_trials": 12}}, headers=AUTH)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    setting_up = Worker(client.settings, worker_id="slow-setup")
    with session_factory(client.settings.database_url)() as s:
        study = setting_up._runner_for(s.get(Study, sid)).study
    units = setting_up.runner.setup.open_units()
    assert units and all(u.startswith("checkpoint:") or u in ("base", "uniform", "task_arithmetic", "ties", "dare_ties")
                         for u in units)
    for u in units:  # it holds every set-up unit (references + merge baselines under way), heart-beating
        study.set_user_attr(f"setupclaim:{u}", {"by": "slow-setup", "at": time.time() + 60})
    study.set_user_attr("setup_open", [[f"setup:{u}", f"setupclaim:{u}"] for u in units])
    waiting = Worker(client.settings, worker_id="joiner")
    t = threading.Thread(target=waiting.run_forever, kwargs={"max_idle_s": 0.3})
    t.start()
    t.join(timeout=2.0)
    assert t.is_alive() and waiting.waiting_for_setup  # it waits to join, it is not idle
    assert client.post("/v1/studies/setup-wait/cancel", headers=AUTH).status_code == 200
    t.join(timeout=10)
    assert not t.is_alive() and waiting.trials_run == 0  # no study left: idle, so it exits


@pytest.mark.parametrize("method,path", [
    ("get", "/v1/studies/nope"), ("get", "/v1/studies/nope/front"), ("get", "/v1/studies/nope/trials"),
    ("get", "/v1/pools/nope"), ("get", "/v1/suites/nope"), ("get", "/v1/studies/nope/events"),
])
def test_unknown_ids_are_404(client, method, path):
    r = getattr(client, method)(path)
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_auth(client, assets):
    _, a = assets
    assert client.post("/v1/pools", json={"name": "x", **a["pool"]}).status_code == 401
    r = client.post("/v1/pools", json={"name": "x", **a["pool"]}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    assert client.post("/v1/studies/flow/pause").status_code == 401
    assert client.get("/v1/studies").status_code == 200  # reads open unless protect_reads


def test_reads_can_be_protected(assets):
    root, _ = assets
    settings = settings_for(root, f"sqlite:///{root}/protected.db")
    settings.protect_reads = True
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/studies").status_code == 401
        assert c.get("/v1/studies", headers=AUTH).status_code == 200


def test_bad_input_is_4xx_with_a_reason(client, assets, tmp_path_factory):
    root, a = assets
    outside = tmp_path_factory.mktemp("outside")
    cases = [
        ({"name": "b1", **a, "search": {"n_trials": 0}}, 422, "n_trials"),
        ({"name": "b2", **a, "search": {"method": "slerp"}}, 422, "method"),
        ({"name": "b3", "pool": a["pool"], "suite": {**a["suite"], "tasks": [{"task": "nope"}]}}, 422, "unknown lm-eval task 'nope'"),
        ({"name": "b4", "pool": {**a["pool"], "base": str(outside)}, "suite": a["suite"]}, 403, "outside the allowed roots"),
        ({"name": "b5", "pool": {**a["pool"], "base": str(root / ".." / "x")}, "suite": a["suite"]}, 403, "'..'"),
        ({"name": "b6", "pool": {**a["pool"], "base": str(root / "missing")}, "suite": a["suite"]}, 422, "does not exist"),
        ({"name": "b7", **a, "pool_id": "abc"}, 422, "exactly one of pool or pool_id"),
        ({"name": "flow", **a}, 409, "exists"),
    ]
    for body, status, reason in cases:
        r = client.post("/v1/studies", json=body, headers=AUTH)
        assert r.status_code == status, (body["name"], r.text)
        assert reason in str(r.json()["detail"]), (body["name"], r.text)
    link = root / "escape"
    link.symlink_to(outside, target_is_directory=True)
    r = client.post("/v1/pools", json={"name": "sym", "base": str(link), "checkpoints": a["pool"]["checkpoints"]}, headers=AUTH)
    assert r.status_code == 403 and "resolves to" in r.json()["detail"]
    r = client.post("/v1/studies", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/studies/flow/trials/0/export", json={"out_dir": str(outside)}, headers=AUTH)
    assert r.status_code == 403
    # Nothing half-made was stored by the failures above.
    for kind in ("studies", "pools", "suites"):
        names = [s["name"] for s in client.get(f"/v1/{kind}").json()]
        assert not any(n.startswith(("b", "sym")) for n in names), (kind, names)


def test_a_trial_of_a_dead_worker_is_failed_by_heartbeat_and_retried(assets, tmp_path):
    root, a = assets
    settings = settings_for(root, f"sqlite:///{tmp_path}/hb.db")
    settings.heartbeat_s, settings.grace_s = 1, 2
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/studies", json={"name": "hb", **a, "search": {"n_trials": 12}}, headers=AUTH).status_code == 201
        w = Worker(settings, worker_id="alive")
        assert w.run_once()  # set-up + one trial
        # A second worker claims a trial and dies without telling: RUNNING, heartbeat recorded once.
        import optuna

        storage = optuna.storages.RDBStorage(settings.database_url, heartbeat_interval=1, grace_period=2)
        study = optuna.load_study(study_name="hb", storage=storage)
        dead = study.ask(w.runner.space.distributions())
        storage.record_heartbeat(dead._trial_id)
        assert c.get("/v1/studies/hb").json()["progress"]["running"] == 1
        import time

        time.sleep(2.5)
        w.run_forever(max_idle_s=1.0)
        trials = c.get("/v1/studies/hb/trials").json()
        assert sum(t["state"] == "COMPLETE" for t in trials) == 12
        assert [t["number"] for t in trials if t["state"] == "FAIL"] == [dead.number]
        events = parse_sse(c.get("/v1/studies/hb/events").text)
        failed = [e for e in events if e["type"] == "trial_failed"]
        assert [e["data"]["trial"] for e in failed] == [dead.number]
        assert "no heartbeat" in failed[0]["data"]["error"]
