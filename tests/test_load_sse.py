"""Event streams under load on loopback: 500 SSE clients hold streams of a running study on a real
`mergeopt serve` (uvicorn, API + in-process worker, SQLite) while 50 pollers read the front, the
trials and the study list; the pollers must see 0 errors and the streams stay open throughout.

Before issue 11 each stream held a pooled database connection: ~60 of them made GET /v1/studies
answer 500. Short form here (10 s); the long form is bench/sse_load.py (60 s). The SSE clients run
in a process of their own (tests/sse_crowd.py): the 2 cores are shared by the server, its
worker, the crowd and the pollers. Traffic goes to 127.0.0.1 only and stops by itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_load import ServedStudy, run_load

CROWD = Path(__file__).with_name("sse_crowd.py")
# All the crowd's streams come from one address: the per-client cap is lifted for it.
# So is the per-address connection cap (issue 20): here one address stands for 550 clients.
SSE_ENV = {"MERGEOPT_MAX_STREAMS": "1000", "MERGEOPT_MAX_STREAMS_PER_CLIENT": "1000",
           "MERGEOPT_MAX_CONNECTIONS_PER_CLIENT": "2000"}


def run_sse_load(served: ServedStudy, *, sse_clients: int, pollers: int, seconds: float, interval: float) -> dict:
    """The crowd opens its streams; once all are open, ``pollers`` clients poll for ``seconds``."""
    path = f"/v1/studies/{served.name}/events"
    crowd = subprocess.Popen([sys.executable, str(CROWD), served.base, path, "--clients", str(sse_clients),
                              "--seconds", str(seconds + 2)], stdout=subprocess.PIPE, text=True)
    try:
        ready = crowd.stdout.readline()  # "ready N" once every stream answered
        assert ready.startswith("ready"), ready
        before = served.study()["progress"]["completed"]
        polls = run_load(served.base, [*served.paths, "/v1/studies"], clients=pollers, seconds=seconds, interval=interval)
        polls["trials_during_run"] = served.study()["progress"]["completed"] - before
        streams = json.loads(crowd.stdout.readline())
        crowd.wait(timeout=60)
    finally:
        if crowd.poll() is None:
            crowd.kill()
            crowd.wait()
    return {"streams": streams, "polls": polls}


def test_500_streams_and_50_pollers_see_no_errors(tmp_path, monkeypatch):
    for key, value in SSE_ENV.items():
        monkeypatch.setenv(key, value)
    served = ServedStudy(tmp_path, n_trials=2000)
    try:
        stats = run_sse_load(served, sse_clients=500, pollers=50, seconds=10, interval=1.0)
        after = served.study()
    finally:
        served.stop()
    print(f"\nSSE load (500 streams + 50 pollers x 10 s, API + in-process worker, SQLite): {stats}")
    streams, polls = stats["streams"], stats["polls"]
    assert polls["errors"] == 0, polls["first_errors"]
    assert polls["requests"] >= 50 * 8, polls  # each poller about once a second
    assert streams["opened"] == streams["held"] == 500, streams  # none refused, dropped or failed
    assert streams["events"] >= 500 * 3, streams  # the study's events reached the streams
    assert after["state"] == "running"  # the worker evaluated throughout
