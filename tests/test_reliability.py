"""Faults while studies run, with real processes: a worker SIGKILLed mid-trial, an evaluation
that raises (out of memory) or scores NaN, the API SIGKILLed and restarted while workers go on.
(PostgreSQL races and restarts: test_reliability_postgres.py.)

Invariants checked after every fault (faultkit.check_study): the study completes with exactly
n_trials COMPLETE trials, no trial is started twice, the killed trial is failed (not lost, not in
the front), the front is the non-dominated set of the completed trials, and nothing stored is
lost or duplicated. Heartbeats are shortened (MERGEOPT_HEARTBEAT_S=1, MERGEOPT_GRACE_S=3) so a
dead worker's trial is failed and its budget claimed again within seconds."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from faultkit import (
    check_study,
    create_study,
    events,
    optuna_trials,
    service_env,
    snapshot,
    start_api,
    start_worker,
    stop_all,
    tails,
    wait_started,
    wait_up,
)
from servicekit import (
    AUTH,
    check_front_consistent,
    make_assets,
    parse_sse,
    settings_for,
    wait_for,
)
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.db.models import Study, Trial

# ------------------------------------------------------------------------------ worker faults

def test_worker_sigkilled_mid_trial_is_failed_by_heartbeat_and_retried(tmp_path):
    """Two worker processes; the first one to start a search trial holds it (tests/hooks) and is
    SIGKILLed while it does. The survivor fails that trial once its heartbeat is 3 s old, claims
    the budget again and finishes the study."""
    assets = make_assets(tmp_path, n_docs=40)
    url = f"sqlite:///{tmp_path}/kill.db"
    env = service_env(tmp_path, url)
    hold = tmp_path / "hold"
    hold.mkdir()
    hooks = {"PYTHONPATH": str(Path(__file__).parent / "hooks"), "MERGEOPT_TEST_HOLD_DIR": str(hold)}
    api, base = start_api(env, tmp_path)
    workers = {w: start_worker(w, {**env, **hooks}, tmp_path) for w in ("w0", "w1")}
    n_trials, name = 12, "killed-worker"
    try:
        wait_up(api, base)
        wait_started(list(workers.values()))
        sid = create_study(base, name, assets, n_trials)["id"]
        pid = int(wait_for(lambda: (hold / "holding").exists() and (hold / "holding").read_text(), timeout=180, every=0.05))
        victim = next(w for w in workers.values() if w.popen.pid == pid)
        first = wait_for(lambda: next((e for e in events(url, sid) if e.type == "trial_started"
                                       and e.payload["worker"] == victim.name), None), timeout=30, every=0.05)
        killed = first.payload["trial"]
        state = {t.number: t.state.name for t in optuna_trials(url, name)}[killed]
        victim.kill9()
        assert state == "RUNNING", f"trial {killed} was {state} while its worker held it"
        wait_for(lambda: httpx.get(f"{base}/v1/studies/{name}").json()["state"] in ("completed", "failed"), timeout=240)
        trials, front, evs = check_study(base, name, url, n_trials)
    finally:
        logs = stop_all(api, *workers.values())
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert [t["number"] for t in failed] == [killed], (failed, tails(logs))
    # Over REST the failed trial says why (it has no error of its own: its worker died).
    assert failed[0]["error"].startswith("worker stopped sending heartbeats (died or was killed); failed after ")
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

    import service.worker.runtime as worker_mod

    assets = make_assets(tmp_path)
    real = worker_mod.build_evaluator
    # Search trial N's merge is seeded N (seed 0 in the spec); references and baselines use 0.
    # 3 checkpoints: trials 0-9 are the single checkpoints, the base, the merge baselines and the
    # greedy soup's two evaluations.
    faults = {10: "oom", 12: "nan"}

    def flaky_evaluator(spec, **kwargs):
        ev = real(spec, **kwargs)
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
    n_trials = 13
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/studies", json={"name": "flaky", **assets, "search": {"n_trials": n_trials}}, headers=AUTH).status_code == 201
        worker_mod.Worker(settings, worker_id="flaky").run_forever(max_idle_s=1.0)
        study = c.get("/v1/studies/flaky").json()
        assert study["state"] == "completed" and study["progress"]["completed"] == n_trials, study
        assert study["progress"]["failed"] == 2
        failed = c.get("/v1/studies/flaky/trials", params={"state": "fail"}).json()
        errors = {t["number"]: t["error"] for t in failed}
        assert len(errors) == 2 and all(t["kind"] == "search" and t["candidate"] for t in failed), failed
        oom, nan = 10, 12
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
    for key in ("events", "mirror"):
        assert before[key] <= after[key], key  # nothing lost
    assert after["mirror_dupes"] == [] and before["mirror_dupes"] == []
    assert after["optuna"].keys() >= before["optuna"].keys()
    assert all(after["optuna"][k] == v for k, v in before["optuna"].items() if v != "RUNNING")
    assert sum(s == "COMPLETE" for s in after["optuna"].values()) == n_trials
