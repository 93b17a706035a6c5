"""service.client against a live `mergeopt serve` (uvicorn + in-process worker), on SQLite and
PostgreSQL: one server per database for the whole module."""

import contextlib
import json
import os
import subprocess
import sys
import uuid

import pytest
import yaml
from conftest import scratch_pg_database
from servicekit import TOKEN, make_assets, wait_for
from test_service_processes import serve, stop

from service.client import (
    Busy,
    Client,
    Conflict,
    Invalid,
    NotFound,
    Refused,
    StudyFailed,
    Unauthorized,
)
from service.client.models import TERMINAL


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request, tmp_path_factory):
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    root = tmp_path_factory.mktemp(f"client-{request.param}")
    if request.param == "postgresql":
        # A database of its own: workers of other servers on the shared one would pick these studies up.
        url = stack.enter_context(scratch_pg_database("mergeopt_client"))
    else:
        url = f"sqlite:///{root}/svc.db"
    assets = make_assets(root)
    # One event stream per client address: a second one is refused with 429 and Retry-After.
    proc, base = serve(root, url, env={"MERGEOPT_MAX_STREAMS_PER_CLIENT": "1"})
    try:
        yield {"root": root, "assets": assets, "base": base, "backend": request.param}
    finally:
        stop(proc)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_submit_wait_verdict_and_export(live, tmp_path):
    """A study from a YAML with relative paths, followed to the end over SSE, read back and exported."""
    root, assets = live["root"], live["assets"]
    study_yaml = root / f"{_name('spec')}.yaml"
    rel = {"base": "pool/base", "checkpoints": [{"name": c["name"], "path": str(c["path"]).removeprefix(f"{root}/")}
                                                for c in assets["pool"]["checkpoints"]]}
    name = _name("flow")
    study_yaml.write_text(yaml.safe_dump({"name": name, "pool": rel, "suite": assets["suite"],
                                          "search": {"n_trials": 8}, "storage": "sqlite:///ignored.db"}))
    with Client(live["base"], TOKEN) as c:
        created = c.create_study(study_yaml)
        assert created.name == name and created.state in ("queued", "running")
        seen = []
        final = c.wait(name, on_event=seen.append, timeout=240)
        assert final.state == "completed" and final.progress.completed == 8
        assert [e.type for e in seen].count("trial_finished") == 8
        assert [e.id for e in seen] == sorted({e.id for e in seen})  # each once, in order
        assert seen[-1].type == "state" and seen[-1].data["state"] == "completed"

        front = c.front(name)
        assert front.split == "validation" and front.front
        verdict = c.verdict(name)
        assert verdict is not None and verdict.recommended is not None and verdict.text
        best = c.recommended_trial(name)
        assert best.number == verdict.recommended and best.state == "COMPLETE" and best.validation
        assert best.objective == max(t.objective for t in c.trials(name, "complete"))  # best on search documents of all trials

        # Resumable: the events after a given id are exactly the tail of the stream.
        tail = list(c.events(name, after=seen[3].id, follow=False))
        assert [e.id for e in tail] == [e.id for e in seen[4:]]

        out = c.export(name, best.number, tmp_path / "merged")
        assert {"config.json", "model.safetensors", "mergekit_config.yml"} <= {p.name for p in out.iterdir()}
        with pytest.raises(Conflict, match="pause a study that is completed"):
            c.pause(name)


def test_errors_are_typed_and_carry_the_servers_reason(live, tmp_path):
    base, assets = live["base"], live["assets"]
    with Client(base, token="") as anonymous, pytest.raises(Unauthorized, match="missing bearer token") as exc:
        anonymous.create_study({"name": _name("x"), **assets})
    assert exc.value.status == 401
    with Client(base, token="wrong") as c, pytest.raises(Unauthorized, match="invalid token"):
        c.cancel("anything")
    with Client(base, TOKEN) as c:
        with pytest.raises(NotFound, match="no-such-study") as exc:
            c.study("no-such-study")
        assert exc.value.status == 404
        with pytest.raises(Invalid, match="pool") as exc:
            c.create_study({"name": _name("x"), "suite": assets["suite"]})
        assert exc.value.status == 422
        with pytest.raises(Refused, match="allowed") as exc:
            c.register_pool(_name("p"), {"checkpoints": [{"name": "a", "path": "/etc"}]})
        assert exc.value.status == 403
        pool = c.register_pool(_name("pool"), assets["pool"])
        suite = c.register_suite(_name("suite"), assets["suite"])
        assert pool.id in {p.id for p in c.pools()} and suite.id in {s.id for s in c.suites()}


def test_pause_resume_cancel_and_a_cancelled_wait(live):
    assets = live["assets"]
    name = _name("ctl")
    with Client(live["base"], TOKEN) as c:
        pool = c.register_pool(_name("pool"), assets["pool"])
        suite = c.register_suite(_name("suite"), assets["suite"])
        c.create_study({"name": name, "pool_id": pool.id, "suite_id": suite.id, "search": {"n_trials": 400}},
                       priority=5)
        events = c.events(name)
        next(e for e in events if e.type == "trial_started")  # running: no worker start races the pause
        events.close()
        assert c.pause(name).state == "paused"
        assert c.resume(name).state == "queued"
        assert c.cancel(name).state == "cancelled"
        with pytest.raises(StudyFailed, match="cancelled") as exc:
            c.wait(name, timeout=60, poll_s=0.2)
        assert exc.value.study.state == "cancelled"
        assert c.wait(name, raise_on_failure=False).state in TERMINAL


def test_429_is_retried_after_retry_after(live):
    """The server allows one event stream per address: a second is refused with 429 and
    Retry-After 5; without retries that is Busy, with them the call succeeds once the first closes."""
    import threading
    import time

    key = _name("held")
    with Client(live["base"], TOKEN) as c:
        c.create_study({"name": key, **live["assets"], "search": {"n_trials": 400}})
        c.pause(key)  # not finished: a following stream stays open
        holder = c._send("GET", f"/v1/studies/{key}/events", stream=True, params={"follow": "true"})
        try:
            with Client(live["base"], TOKEN, retries=0) as impatient, pytest.raises(Busy) as exc:
                list(impatient.events(key, follow=False))
            assert exc.value.status == 429 and exc.value.retry_after == 5
            threading.Timer(1.0, holder.close).start()  # frees the slot while the next call waits
            start = time.monotonic()
            with Client(live["base"], TOKEN, retries=2) as patient:
                events = list(patient.events(key, follow=False))
            assert time.monotonic() - start >= 4.5 and events  # waited the server's Retry-After, not less
        finally:
            holder.close()
            c.cancel(key)


# ---------------------------------------------------------------- the CLI against the server
def _cli(*args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_env(live):
    if live["backend"] != "sqlite":
        pytest.skip("the CLI is the same over either database: run once")
    return {"MERGEOPT_SERVER": live["base"], "MERGEOPT_TOKEN": TOKEN}


def test_cli_submit_wait_export_status_front(live, cli_env, tmp_path):
    """The pipeline step of the README: submit, follow, print the verdict, export the recommended merge."""
    name = _name("cli")
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"name": name, **live["assets"], "search": {"n_trials": 8}}))
    out = tmp_path / "merged"
    r = _cli("submit", str(spec), "--wait", "--export", str(out), "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["study"]["state"] == "completed" and result["exported"] == str(out)
    assert "[8/8] trial" in r.stderr and "study completed" in r.stderr  # progress, on stderr
    assert {"model.safetensors", "mergekit_config.yml"} <= {p.name for p in out.iterdir()}
    with Client(live["base"], TOKEN) as c:
        assert result["recommended"] == c.verdict(name).recommended
        assert result["search_paid"] == c.verdict(name).search_paid

    r = _cli("status", name, env=cli_env)
    assert r.returncode == 0 and r.stdout.startswith(f"{name}: completed, 8/8 trials completed"), r.stderr
    assert f"recommended trial {result['recommended']} (" in r.stdout and "validation" in r.stdout
    assert "recommended merge: trial" in r.stdout
    r = _cli("front", name, env=cli_env)  # the same table as local mode
    assert r.returncode == 0 and "Pareto front on VALIDATION documents" in r.stdout, r.stderr
    assert f"{result['recommended']} *" in r.stdout
    r = _cli("export", name, "recommended", str(tmp_path / "again"), "--server", live["base"], env={})
    assert r.returncode == 0 and f"wrote trial {result['recommended']}" in r.stdout, r.stderr
    r = _cli("export", name, "recommended", str(tmp_path / "again"), env=cli_env)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "not an empty folder" in r.stderr
    r = _cli("status", "no-such-study", env=cli_env)
    assert r.returncode == 2 and r.stderr.strip() == "error: 404: no study 'no-such-study'", r.stderr


def test_cli_submit_exits_non_zero_when_the_study_ends_badly(live, cli_env, tmp_path):
    name = _name("doomed")
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"name": name, **live["assets"], "search": {"n_trials": 400}}))
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "submit", str(spec), "--wait"],
                            env={**os.environ, **cli_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Client(live["base"], TOKEN) as c:
            wait_for(lambda: any(s.name == name and s.progress.completed for s in c.studies()), timeout=120)
            c.cancel(name)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert f"error: study '{name}' cancelled" in stderr and "Traceback" not in stderr
    r = _cli("submit", str(tmp_path / "missing.yaml"), env=cli_env)
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read study file"), r.stderr
    r = _cli("submit", str(spec), env={**cli_env, "MERGEOPT_TOKEN": "wrong"})
    assert r.returncode == 2 and r.stderr.strip() == "error: 403: invalid token", r.stderr
