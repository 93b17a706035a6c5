"""The service as real processes: `mergeopt serve` under uvicorn with its in-process worker on
SQLite, and on PostgreSQL an API-only server with two `mergeopt worker` processes."""

import os
import socket
import subprocess
import sys
import uuid
from collections import Counter

import httpx
import pytest
from conftest import PG_URL, postgres_reachable
from servicekit import AUTH, TOKEN, check_front_consistent, make_assets, parse_sse, wait_for
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from service.db.models import Event, Study


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mergeopt(*args, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def service_env(root, url) -> dict:
    return {"MERGEOPT_DATABASE_URL": url, "MERGEOPT_TOKENS": TOKEN, "MERGEOPT_ALLOWED_ROOTS": str(root),
            "MERGEOPT_WORKER_POLL_S": "0.2", "MERGEOPT_SSE_POLL_S": "0.1", "HF_HUB_OFFLINE": "1"}


def serve(root, url, *extra, env: dict | None = None):
    port = free_port()
    proc = mergeopt("serve", "--port", str(port), *extra, env={**service_env(root, url), **(env or {})})
    base = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=60)
    return proc, base


def stop(proc):
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def run_flow(base, assets, name, n_trials=12):
    body = {"name": name, **assets, "search": {"n_trials": n_trials}}
    r = httpx.post(f"{base}/v1/studies", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text
    wait_for(lambda: httpx.get(f"{base}/v1/studies/{name}").json()["state"] in ("completed", "failed"), timeout=240)
    study = httpx.get(f"{base}/v1/studies/{name}").json()
    assert study["state"] == "completed", study
    assert study["progress"]["completed"] == n_trials
    trials = httpx.get(f"{base}/v1/studies/{name}/trials").json()
    check_front_consistent(httpx.get(f"{base}/v1/studies/{name}/front").json(), trials)
    with httpx.stream("GET", f"{base}/v1/studies/{name}/events", timeout=30) as r:
        events = parse_sse(r.read().decode())
    assert [e["type"] for e in events].count("trial_finished") == n_trials
    return study, events


def test_uvicorn_with_in_process_worker_on_sqlite(tmp_path):
    assets = make_assets(tmp_path)
    proc, base = serve(tmp_path, f"sqlite:///{tmp_path}/svc.db")
    try:
        assert httpx.get(f"{base}/docs").status_code == 200
        assert "/v1/studies/{key}/front" in httpx.get(f"{base}/openapi.json").json()["paths"]
        run_flow(base, assets, "uv")
        r = httpx.post(f"{base}/v1/studies/uv/trials/0/export", json={"out_dir": str(tmp_path / "x")}, headers=AUTH, timeout=60)
        assert r.status_code == 201, r.text
    finally:
        stop(proc)


def test_postgres_two_worker_processes_never_share_a_trial(tmp_path):
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    assets = make_assets(tmp_path, n_docs=60)  # trials long enough for both workers to join
    name = f"pg-{uuid.uuid4().hex[:8]}"
    proc, base = serve(tmp_path, PG_URL, "--no-worker")
    env = service_env(tmp_path, PG_URL)
    workers = [mergeopt("worker", "--id", f"w{i}", "--exit-when-idle", "8", env=env) for i in range(2)]
    for w in workers:  # both are up and polling before the study exists
        assert w.stdout.readline().startswith("worker w")
    try:
        _, events = run_flow(base, assets, name, n_trials=30)
    finally:
        logs = [stop(w) for w in workers]
        stop(proc)
    started = Counter(e["data"]["trial"] for e in events if e["type"] == "trial_started")
    assert started and max(started.values()) == 1, started  # no trial evaluated twice
    finished = Counter(e["data"]["trial"] for e in events if e["type"] == "trial_finished")
    assert max(finished.values()) == 1
    by_worker = Counter(e["data"]["worker"] for e in events if e["type"] == "trial_finished")
    assert set(by_worker) == {"w0", "w1"}, (by_worker, logs)
    with Session(create_engine(PG_URL)) as s:
        study = s.scalar(select(Study).where(Study.name == name))
        assert study.state == "completed"
        assert s.scalar(select(Event.id).where(Event.study_id == study.id).limit(1)) is not None
