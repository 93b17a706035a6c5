"""Faults while studies run, with real processes: a worker SIGKILLed mid-trial, an evaluation
that raises (out of memory) or scores NaN, the API SIGKILLed and restarted while workers go on,
three workers racing on PostgreSQL, and PostgreSQL restarted under them.

Invariants checked after every fault: the study completes with exactly n_trials COMPLETE
trials, no trial is started twice, the killed trial is failed (not lost, not in the front),
the front is the non-dominated set of the completed trials, and nothing stored is lost or
duplicated. Heartbeats are shortened (MERGEOPT_HEARTBEAT_S=1, MERGEOPT_GRACE_S=3) so a dead
worker's trial is failed and its budget claimed again within seconds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import optuna
import pytest
from conftest import PG_URL, postgres_reachable, scratch_pg_database
from fastapi.testclient import TestClient
from servicekit import (
    AUTH,
    TOKEN,
    check_front_consistent,
    make_assets,
    parse_sse,
    settings_for,
    wait_for,
)
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.db.models import Event, FrontSnapshot, Study, Trial

FAST_HEARTBEAT = {"MERGEOPT_HEARTBEAT_S": "1", "MERGEOPT_GRACE_S": "3"}


# ------------------------------------------------------------------------------ processes

class Proc:
    """A `mergeopt` subprocess logging to a file (a pipe nobody reads could block it)."""

    def __init__(self, name: str, args: list[str], env: dict, logdir: Path) -> None:
        self.name, self.log = name, logdir / f"{name}.log"
        self.popen = subprocess.Popen([sys.executable, "-m", "service.cli", *args], env={**os.environ, **env},
                                      stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(root: Path, url: str, **extra) -> dict:
    return {"MERGEOPT_DATABASE_URL": url, "MERGEOPT_TOKENS": TOKEN, "MERGEOPT_ALLOWED_ROOTS": str(root),
            "MERGEOPT_WORKER_POLL_S": "0.2", "MERGEOPT_SSE_POLL_S": "0.1", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **FAST_HEARTBEAT, **extra}


def start_api(env: dict, logdir: Path, name: str = "api") -> tuple[Proc, str]:
    port = free_port()
    return Proc(name, ["serve", "--no-worker", "--port", str(port)], env, logdir), f"http://127.0.0.1:{port}"


def start_worker(wid: str, env: dict, logdir: Path) -> Proc:
    return Proc(wid, ["worker", "--id", wid], env, logdir)


def wait_up(api: Proc, base: str) -> None:
    def up():
        assert api.alive(), api.output()
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=90, every=0.2)


def wait_started(workers: list[Proc]) -> None:
    """Each worker printed its banner (imports done, migrations applied, polling)."""
    for w in workers:
        wait_for(lambda w=w: (w.alive() or pytest.fail(w.output())) and f"worker {w.name} on" in w.output(), timeout=90, every=0.2)


def stop_all(*procs: Proc) -> dict[str, str]:
    for p in procs:
        p.stop()
    return {p.name: p.output() for p in procs}


def tails(logs: dict[str, str]) -> dict[str, str]:
    return {name: text[-2000:] for name, text in logs.items()}


def create_study(base: str, name: str, assets: dict, n_trials: int, **extra) -> dict:
    r = httpx.post(f"{base}/v1/studies", json={"name": name, **assets, "search": {"n_trials": n_trials}, **extra},
                   headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


# ------------------------------------------------------------------------------ database views

def events(url: str, study_id: str, after: int = 0) -> list[Event]:
    with Session(create_engine(url)) as s:
        return list(s.scalars(select(Event).where(Event.study_id == study_id, Event.id > after).order_by(Event.id)))


def optuna_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def snapshot(url: str) -> dict:
    """Every row a restart must neither lose nor duplicate."""
    with create_engine(url).connect() as conn:
        out = {key: set(conn.execute(select(table.id)).scalars())
               for key, table in (("studies", Study), ("front_snapshots", FrontSnapshot), ("events", Event))}
        per_number = conn.execute(select(Trial.study_id, Trial.number, func.count()).group_by(Trial.study_id, Trial.number)).all()
        optuna_rows = conn.execute(text("select s.study_name, t.number, t.state from trials t join studies s using (study_id)")).all()
    return {
        **out, "mirror": {(sid, n) for sid, n, _ in per_number}, "mirror_dupes": [r for r in per_number if r[2] != 1],
        "optuna": {(name, n): state for name, n, state in optuna_rows},
    }


def check_study(base: str, name: str, url: str, n_trials: int) -> tuple[list[dict], dict, list[Event]]:
    """The invariants every fault must keep; returns trials, front and events."""
    study = httpx.get(f"{base}/v1/studies/{name}", timeout=30).json()
    assert study["state"] == "completed", study
    trials = httpx.get(f"{base}/v1/studies/{name}/trials", timeout=30).json()
    assert sum(t["state"] == "COMPLETE" for t in trials) == n_trials == study["progress"]["completed"]
    assert not [t for t in trials if t["state"] not in ("COMPLETE", "FAIL")]
    front = httpx.get(f"{base}/v1/studies/{name}/front", timeout=30).json()
    check_front_consistent(front, trials)
    evs = events(url, study["id"])
    started = Counter(e.payload["trial"] for e in evs if e.type == "trial_started")
    assert started and max(started.values()) == 1, started  # no trial evaluated twice
    finished = Counter(e.payload["trial"] for e in evs if e.type == "trial_finished")
    done = {t["number"] for t in trials if t["state"] == "COMPLETE"}
    assert set(finished) == done and max(finished.values()) == 1, (finished, done)
    search = {t["number"] for t in trials if t["kind"] == "search"}
    # Every search trial started exactly once, except one cut between ask and its first
    # heartbeat (the database went away): never started, it must have been failed.
    unstarted = search - set(started)
    assert set(started) <= search, (started, search)
    assert all(t["state"] == "FAIL" for t in trials if t["number"] in unstarted), (unstarted, trials)
    with Session(create_engine(url)) as s:  # our mirror agrees with Optuna's tables
        mirror = dict(s.execute(select(Trial.number, Trial.state).where(Trial.study_id == study["id"])).all())
    assert mirror == {t["number"]: t["state"] for t in trials}
    return trials, front, evs


# ------------------------------------------------------------------------------ worker faults

def test_worker_sigkilled_mid_trial_is_failed_by_heartbeat_and_retried(tmp_path):
    """Two worker processes; the first one seen starting a search trial is SIGKILLed while it
    evaluates it. The survivor fails that trial once its heartbeat is 3 s old, claims the
    budget again and finishes the study."""
    assets = make_assets(tmp_path, n_docs=40)  # ~0.5-1 s a trial on 2 cores: time to kill it mid-way
    url = f"sqlite:///{tmp_path}/kill.db"
    env = service_env(tmp_path, url)
    api, base = start_api(env, tmp_path)
    workers = {w: start_worker(w, env, tmp_path) for w in ("w0", "w1")}
    n_trials, name = 12, "killed-worker"
    try:
        wait_up(api, base)
        wait_started(list(workers.values()))
        sid = create_study(base, name, assets, n_trials)["id"]
        first = wait_for(lambda: next((e for e in events(url, sid) if e.type == "trial_started"), None), timeout=180, every=0.05)
        victim = workers[first.payload["worker"]]
        victim.kill9()
        killed = first.payload["trial"]
        state = {t.number: t.state.name for t in optuna_trials(url, name)}[killed]
        assert state == "RUNNING", f"trial {killed} was {state} when its worker died: make trials slower"
        wait_for(lambda: httpx.get(f"{base}/v1/studies/{name}").json()["state"] in ("completed", "failed"), timeout=240)
        trials, front, evs = check_study(base, name, url, n_trials)
    finally:
        logs = stop_all(api, *workers.values())
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert [t["number"] for t in failed] == [killed], (failed, tails(logs))
    assert killed not in {e["trial"] for e in front["front"]}
    fail_events = [e.payload for e in evs if e.type == "trial_failed"]
    assert [e["trial"] for e in fail_events] == [killed] and "no heartbeat" in fail_events[0]["error"]
    survivor = next(w for w in workers if workers[w] is not victim)
    after = [e.payload["worker"] for e in evs if e.type == "trial_finished" and e.id > first.id]
    assert after and set(after) == {survivor}, after  # the survivor took over the budget


def test_failing_evaluations_are_stored_and_the_study_goes_on(tmp_path, monkeypatch):
    """An evaluation that raises (CUDA out of memory) and one that scores NaN: each trial fails
    with its error stored and listed by GET .../trials?state=fail; the study completes."""
    import torch

    import service.worker as worker_mod

    assets = make_assets(tmp_path)
    real = worker_mod.build_evaluator
    # Search trial N's merge is seeded N (seed 0 in the spec); references and baselines use 0.
    # 3 checkpoints: trials 0-6 are the single checkpoints and merge baselines.
    faults = {8: "oom", 10: "nan"}

    def flaky_evaluator(spec, progress=False):
        ev = real(spec, progress=progress)
        evaluate = ev.evaluate

        def patched(candidate):
            raw = evaluate(candidate)
            fault = faults.get(candidate.seed)
            if fault == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return {k: float("nan") for k in raw} if fault == "nan" else raw

        ev.evaluate = patched
        return ev

    monkeypatch.setattr(worker_mod, "build_evaluator", flaky_evaluator)
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path}/flaky.db")
    n_trials = 11
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/studies", json={"name": "flaky", **assets, "search": {"n_trials": n_trials}}, headers=AUTH).status_code == 201
        worker_mod.Worker(settings, worker_id="flaky").run_forever(max_idle_s=1.0)
        study = c.get("/v1/studies/flaky").json()
        assert study["state"] == "completed" and study["progress"]["completed"] == n_trials, study
        assert study["progress"]["failed"] == 2
        failed = c.get("/v1/studies/flaky/trials", params={"state": "fail"}).json()
        errors = {t["number"]: t["error"] for t in failed}
        assert len(errors) == 2 and all(t["kind"] == "search" and t["candidate"] for t in failed), failed
        oom, nan = 8, 10
        assert sorted(errors) == [oom, nan]
        assert errors[oom] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
        assert errors[nan].startswith("RuntimeError: evaluator returned a non-finite score for task 'tiny_add': nan")
        trials = c.get("/v1/studies/flaky/trials").json()
        front = c.get("/v1/studies/flaky/front").json()
        check_front_consistent(front, trials)
        assert not {oom, nan} & {e["trial"] for e in front["front"]}
        evs = parse_sse(c.get("/v1/studies/flaky/events").text)
        assert {e["data"]["trial"]: e["data"]["error"] for e in evs if e["type"] == "trial_failed"} == errors
        assert not {oom, nan} & {e["data"]["trial"] for e in evs if e["type"] == "trial_finished"}
    with Session(create_engine(settings.database_url)) as s:  # the mirror says FAIL too (not COMPLETE)
        mirror = dict(s.execute(select(Trial.number, Trial.state).join(Study).where(Study.name == "flaky")).all())
    assert {n: mirror[n] for n in errors} == {oom: "FAIL", nan: "FAIL"}


# ------------------------------------------------------------------------------ API restart

def test_api_sigkilled_and_restarted_while_workers_go_on(tmp_path):
    """The API dies (SIGKILL) mid-study; the worker process keeps evaluating and writing;
    a new API on the same database shows everything, nothing lost or duplicated."""
    assets = make_assets(tmp_path, n_docs=24)
    url = f"sqlite:///{tmp_path}/restart.db"
    env = service_env(tmp_path, url)
    api, base = start_api(env, tmp_path, "api-1")
    worker = start_worker("w0", env, tmp_path)
    n_trials, name = 14, "api-restart"
    api2 = None
    try:
        wait_up(api, base)
        wait_started([worker])
        sid = create_study(base, name, assets, n_trials)["id"]
        # Killed while the search runs and while a client is reading.
        wait_for(lambda: any(e.type == "trial_finished" and e.payload["label"].startswith("trial ") for e in events(url, sid)),
                 timeout=180, every=0.1)
        with httpx.stream("GET", f"{base}/v1/studies/{name}/events", timeout=30) as stream:
            next(stream.iter_lines())
            api.kill9()
        before = snapshot(url)
        done_before = sum(s == "COMPLETE" for s in before["optuna"].values())
        assert done_before < n_trials, "the study finished before the API was killed"
        # Without an API the worker keeps going.
        wait_for(lambda: sum(t.state.name == "COMPLETE" for t in optuna_trials(url, name)) > done_before, timeout=120)
        api2, base = start_api(env, tmp_path, "api-2")
        wait_up(api2, base)  # applies migrations again on start: must be a no-op
        during = httpx.get(f"{base}/v1/studies/{name}").json()
        assert during["progress"]["completed"] > done_before
        wait_for(lambda: httpx.get(f"{base}/v1/studies/{name}").json()["state"] in ("completed", "failed"), timeout=240)
        check_study(base, name, url, n_trials)
        after = snapshot(url)
    finally:
        stop_all(*(p for p in (api, api2, worker) if p is not None))
    assert after["studies"] == before["studies"] and len(after["studies"]) == 1
    for key in ("front_snapshots", "events", "mirror"):
        assert before[key] <= after[key], key  # nothing lost
    assert after["mirror_dupes"] == [] and before["mirror_dupes"] == []
    assert after["optuna"].keys() >= before["optuna"].keys()
    assert all(after["optuna"][k] == v for k, v in before["optuna"].items() if v != "RUNNING")
    assert sum(s == "COMPLETE" for s in after["optuna"].values()) == n_trials


# ------------------------------------------------------------------------------ PostgreSQL

@pytest.fixture
def scratch_pg():
    """A database of its own on the test server (workers must not pick up other tests' studies)."""
    with scratch_pg_database("mergeopt_rel") as url:
        yield url


def pg_restart_command() -> list[str] | str:
    """The pg_ctlcluster line restarting the cluster behind PG_URL, or why it cannot be used."""
    parsed = make_url(PG_URL)
    if parsed.host not in ("127.0.0.1", "localhost", "::1"):
        return f"PostgreSQL at {parsed.host} is not on this machine"
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "pg_ctlcluster is not available (Debian's postgresql-common)"
    if os.geteuid() != 0:
        return "restarting PostgreSQL with pg_ctlcluster needs root"
    port = str(parsed.port or 5432)
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30).stdout
    for version, cluster, cluster_port, *_ in (line.split() for line in listing.splitlines() if line.strip()):
        if cluster_port == port:
            return ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster]
    return f"no cluster listed by pg_lsclusters listens on port {port}"


def known_restart_bugs(url: str, name: str, study_id: str, orphans_only: bool = False, min_age_s: float = 0.0) -> list:
    """Two bugs a database restart used to hit (fixed: optimizer/loop.py _fail_stale fails trials
    that never heart-beat; service/listener.py retries its writes):

    1. A trial created by ``ask`` whose first heartbeat never got written (the connection died
       between the two commits) stays RUNNING forever: Optuna's fail_stale_trials only fails
       trials *with* a stale heartbeat, so its budget is never claimed again and the study
       never completes.
    2. A trial told COMPLETE whose listener writes (mirror row, trial_finished event, front
       snapshot) failed: Optuna has it, the events stream and mergeopt_trials never will.

    ``min_age_s``: only count orphans started that long ago (younger ones may still be failed by
    a worker after the grace period: that is the fix at work, not the bug)."""
    found = []
    with create_engine(url).connect() as conn:
        rows = conn.execute(text(
            "select t.number, t.datetime_start from trials t join studies s using (study_id) "
            "left join trial_heartbeats h using (trial_id) "
            "where s.study_name = :n and t.state = 'RUNNING' and h.trial_id is null"), {"n": name}).all()
        now = datetime.now()  # Optuna stores naive local times
        orphans = [n for n, start in rows if start is None or (now - start).total_seconds() >= min_age_s]
        mirror = dict(conn.execute(select(Trial.number, Trial.state).where(Trial.study_id == study_id)).all())
    if orphans_only:
        return orphans
    if orphans:
        found.append(f"RUNNING trials without a heartbeat, never failed: {sorted(orphans)}")
    done = {t.number for t in optuna_trials(url, name) if t.state.name == "COMPLETE"}
    finished = {e.payload["trial"] for e in events(url, study_id) if e.type == "trial_finished"}
    unreported = sorted(n for n in done if n not in finished or mirror.get(n) != "COMPLETE")
    if unreported:
        found.append(f"COMPLETE trials without trial_finished event / mirror row: {unreported}")
    return found


def test_postgres_three_workers_never_share_a_trial_and_survive_a_database_restart(tmp_path, scratch_pg):
    """Three worker processes race on one study; PostgreSQL is restarted under them mid-search.
    Workers back off and resume; trials in flight at the restart are failed by heartbeat and
    their budget claimed again; the study completes, no trial is started twice, nothing that was
    stored before the restart is lost, and neither of known_restart_bugs() shows."""
    cluster = pg_restart_command()
    if isinstance(cluster, str):
        pytest.skip(cluster)
    url = scratch_pg
    assets = make_assets(tmp_path, n_docs=24)
    env = service_env(tmp_path, url)
    api, base = start_api(env, tmp_path)
    workers = [start_worker(f"w{i}", env, tmp_path) for i in range(3)]
    n_trials, name = 24, "pg-race"
    try:
        wait_up(api, base)
        wait_started(workers)
        sid = create_study(base, name, assets, n_trials)["id"]

        def racing():
            evs = events(url, sid)
            search_done = sum(e.type == "trial_finished" and e.payload["label"].startswith("trial ") for e in evs)
            return len({e.payload["worker"] for e in evs if e.type == "trial_started"}) == 3 and search_done >= 3

        wait_for(racing, timeout=240, every=0.2)
        before = snapshot(url)
        try:
            out = subprocess.run([*cluster, "restart"], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
        finally:  # whatever happened, PostgreSQL is up again for the other tests
            if postgres_reachable() is not None:
                subprocess.run([*cluster, "start"], capture_output=True, timeout=120)
            wait_for(lambda: postgres_reachable() is None, timeout=60, every=0.5)

        def finished():
            try:
                return httpx.get(f"{base}/v1/studies/{name}", timeout=10).json()["state"] in ("completed", "failed")
            except httpx.TransportError:
                return False

        def settled():  # finished, or only trials stuck by known bug 1 are left (it never finishes then)
            if finished():
                return True
            # Stuck: still orphaned 10x the grace period after it started (a worker fails it after 3 s).
            stuck = len(known_restart_bugs(url, name, sid, orphans_only=True, min_age_s=30))
            return stuck and sum(t.state.name == "COMPLETE" for t in optuna_trials(url, name)) + stuck >= n_trials

        wait_for(settled, timeout=180, every=1.0)
        known = known_restart_bugs(url, name, sid)
        after = snapshot(url)
        workers_alive = [w.alive() for w in workers]
    finally:
        logs = stop_all(api, *workers)
    # Whatever happened: no worker died of the outage, they went on, nothing stored
    # before the restart was lost, no trial was started twice.
    assert all(workers_alive), tails(logs)
    assert any("retrying" in logs[w.name] for w in workers), tails(logs)  # the outage was seen (and survived)
    assert after["studies"] == before["studies"] and after["mirror_dupes"] == []
    for key in ("front_snapshots", "events", "mirror"):
        assert before[key] <= after[key], key
    assert all(after["optuna"][k] == v for k, v in before["optuna"].items() if v != "RUNNING")
    evs = events(url, sid)
    started = Counter(e.payload["trial"] for e in evs if e.type == "trial_started")
    assert max(started.values()) == 1, started
    assert {e.payload["worker"] for e in evs if e.type == "trial_started"} == {"w0", "w1", "w2"}  # all three raced
    assert not known, known  # both used to happen here: orphaned RUNNING trials, lost events
    api, base = start_api(env, tmp_path, "api-check")  # the invariants of a finished study
    try:
        wait_up(api, base)
        trials, _, evs = check_study(base, name, url, n_trials)
    finally:
        stop_all(api)
    fails = {e.payload["trial"]: e.payload["error"] for e in evs if e.type == "trial_failed"}
    assert {t["number"] for t in trials if t["state"] == "FAIL"} == set(fails)
    assert all("no heartbeat" in err for err in fails.values()), fails  # only trials cut by the restart


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_starting_together_on_an_empty_database(tmp_path, request, backend):
    """Every process (API, each worker) applies migrations and opens Optuna's storage on start;
    on an empty database they used to race to create the same tables and stamp the same
    version (a worker died at start with a UniqueViolation / IntegrityError)."""
    url = f"sqlite:///{tmp_path}/fresh.db" if backend == "sqlite" else request.getfixturevalue("scratch_pg")
    code = "import sys; from service.db.migrate import upgrade; upgrade(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    with create_engine(url).connect() as conn:
        assert conn.execute(text("select count(*) from mergeopt_alembic_version")).scalar() == 1
        assert conn.execute(text("select count(*) from alembic_version")).scalar() == 1  # Optuna's
