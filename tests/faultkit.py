"""Helpers of the fault tests: service processes with logs, and views of what the database holds
(events, Optuna trials, a snapshot of everything stored, the invariants every fault must keep)."""


import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import optuna
import pytest
from servicekit import (
    AUTH,
    TOKEN,
    check_front_consistent,
    wait_for,
)
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from service.db.models import Event, Study, Trial

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
               for key, table in (("studies", Study), ("events", Event))}
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
