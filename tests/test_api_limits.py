"""The API's limits (issue 11, findings 2, 6 and 9), each attack reproduced and shown refused:
event streams hold no database connection and are capped (429); every number a client sends is
bounded; a study that cannot be set up is failed with its reason instead of starving the others;
auth before the body is parsed; a body read timeout; the Host allow-list. On SQLite and
PostgreSQL where the database is involved. The 500-stream load test is tests/test_load_sse.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid

import httpx
import pytest
import uvicorn
from conftest import scratch_pg_database
from fastapi.testclient import TestClient
from servicekit import AUTH, make_assets, settings_for, stored, wait_for

from service.api.app import create_app
from service.db.models import Event, Study
from service.db.session import get_engine, session_factory
from service.studies import registry
from service.worker.runtime import Worker

JSON = {**AUTH, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    return root, make_assets(root)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, assets):
    root, _ = assets
    if request.param == "sqlite":
        yield f"sqlite:///{root}/{uuid.uuid4().hex[:8]}.db"
        return
    with scratch_pg_database("mergeopt_limits") as url:
        yield url


@contextlib.contextmanager
def serving(settings):
    """A real uvicorn on 127.0.0.1 in a thread (streams need one: the test client buffers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=60, every=0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def open_stream(port: int, path: str, *, source: str = "127.0.0.1", headers: str = ""):
    """A raw HTTP/1.1 GET: (status, head, reader, writer) once the response head arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    return int(head.split()[1]), head.decode(), reader, writer


def new_study(base: str, a: dict, name: str, **extra) -> None:
    r = httpx.post(f"{base}/v1/studies", json={"name": name, **a, "search": {"n_trials": 12}, **extra}, headers=AUTH,
                   timeout=60)
    assert r.status_code == 201, r.text


# ------------------------------------------------------------------------------ finding 2: streams

def test_open_streams_hold_no_database_connection_and_the_api_keeps_answering(assets, db_url):
    """The attack: more streams on an idle study than the pool has connections (20 + 20). Before,
    each held one for its life (and took a second per poll): GET /v1/studies then waited 30 s
    for a connection and answered 500. Now none is held between polls, and the streams still
    see the study's new events, and end when it does."""
    root, a = assets
    settings = settings_for(root, db_url).model_copy(update={"max_streams_per_client": 500})
    n = 120
    with serving(settings) as port:
        base = f"http://127.0.0.1:{port}"
        new_study(base, a, "idle")

        async def main():
            streams = await asyncio.gather(*(open_stream(port, "/v1/studies/idle/events") for _ in range(n)))
            assert [s[0] for s in streams] == [200] * n
            # Each new stream's first page is read in a session of its own: let that burst drain
            # (bounded), then no connection may stay checked out while the streams stay open.
            for _ in range(200):
                if get_engine(db_url).pool.checkedout() <= 1:
                    break
                await asyncio.sleep(0.05)
            held = []
            for _ in range(30):  # over several of the hub's polls (sse_poll_s = 0.1)
                held.append(get_engine(db_url).pool.checkedout())
                await asyncio.sleep(0.05)
            assert max(held) <= 1, held  # at most the hub's one poll, for a moment
            async with httpx.AsyncClient(base_url=base, timeout=10) as c:
                t0 = time.perf_counter()
                answers = await asyncio.gather(*(c.get("/v1/studies") for _ in range(50)))
                took = time.perf_counter() - t0
            assert [r.status_code for r in answers] == [200] * 50 and took < 10, took
            # Something happens to the study (as a worker would write it): every stream sees it
            # and ends, since the study is finished.
            with session_factory(db_url)() as s:
                row = registry.get_row(s, Study, "idle")
                row.state = "cancelled"
                s.add(Event(study_id=row.id, type="state", payload={"state": "cancelled"}))
                s.commit()
            bodies = await asyncio.gather(*(asyncio.wait_for(r.read(), 30) for _, _, r, _ in streams))
            for _, _, _, w in streams:
                w.close()
            return bodies

        bodies = asyncio.run(main())
        assert all(b"event: state" in b and b'"cancelled"' in b for b in bodies)
        assert httpx.get(f"{base}/v1/studies/idle", timeout=10).json()["state"] == "cancelled"


def test_streams_are_capped_per_client_and_in_all(assets, tmp_path):
    """429 with the reason past MERGEOPT_MAX_STREAMS_PER_CLIENT (one address) and
    MERGEOPT_MAX_STREAMS (all); a stream's slot is free again once its client hangs up."""
    root, a = assets
    settings = settings_for(root, f"sqlite:///{tmp_path}/caps.db").model_copy(
        update={"max_streams": 5, "max_streams_per_client": 3})
    with serving(settings) as port:
        new_study(f"http://127.0.0.1:{port}", a, "capped")
        path = "/v1/studies/capped/events"

        async def main():
            mine = [await open_stream(port, path) for _ in range(3)]
            assert [s[0] for s in mine] == [200] * 3
            status, head, reader, writer = await open_stream(port, path)
            body = json.loads((await reader.read()).decode())
            writer.close()
            assert status == 429 and "retry-after: 5" in head.lower(), head
            assert "from 127.0.0.1" in body["detail"] and "MERGEOPT_MAX_STREAMS_PER_CLIENT" in body["detail"]
            other = [await open_stream(port, path, source="127.0.0.2") for _ in range(2)]
            assert [s[0] for s in other] == [200] * 2
            status, _, reader, writer = await open_stream(port, path, source="127.0.0.3")
            body = json.loads((await reader.read()).decode())
            writer.close()
            assert status == 429 and "(5, MERGEOPT_MAX_STREAMS)" in body["detail"], body
            mine[0][3].close()  # a client hangs up: its slot is released (not at the next keep-alive)
            deadline = time.monotonic() + 10
            while True:
                status, _, _, writer = await open_stream(port, path, source="127.0.0.3")
                if status == 200 or time.monotonic() > deadline:
                    break
                writer.close()
                await asyncio.sleep(0.1)
            assert status == 200
            for s in [*mine[1:], *other, (0, "", None, writer)]:
                s[3].close()

        asyncio.run(main())


# ------------------------------------------------------------------------------ findings 6 and 9: bounds

@pytest.fixture
def client(assets, db_url):
    root, a = assets
    settings = settings_for(root, db_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.settings = settings
        assert c.post("/v1/studies", json={"name": "kept", **a, "search": {"n_trials": 12}}, headers=AUTH).status_code == 201
        yield c


def test_every_client_number_is_bounded_and_duplicates_are_refused(client, assets):
    """Before: 201 for all of these (then a failure on every worker pick, hundreds of GB for the
    population, 8000 copies of one model), or a 500 (2**63 overflows SQLite's integers)."""
    root, a = assets
    c, pool, ckpt = client, a["pool"], a["pool"]["checkpoints"][0]
    before = stored(c)

    def search(**kw):
        return {"search": {"n_trials": 12, **kw}}

    copies = {**pool, "checkpoints": [{"name": f"c{i}", "path": ckpt["path"]} for i in range(8000)]}
    cases = [
        ({"priority": 2**63}, "priority"), ({"priority": 2**70}, "priority"), ({"priority": -(2**63) - 1}, "priority"),
        ({"priority": 1_000_001}, "less than or equal to 1000000"),
        (search(seed=2**70), "seed"), (search(seed=2**32), "seed"), (search(seed=-1), "seed"),
        (search(population_size=10**10), "population_size"), (search(n_trials=10**9), "n_trials"),
        (search(max_failures=10**12), "max_failures"), (search(weight_range=[0, 1e300]), "weight_range"),
        (search(fidelities=[i / 100 for i in range(1, 101)]), "fidelities"),
        ({"suite": {**a["suite"], "limit": 1e12}}, "limit"), ({"suite": {**a["suite"], "batch_size": 10**9}}, "batch_size"),
        ({"suite": {**a["suite"], "validation": 10**12}}, "validation"),
        ({"suite": {**a["suite"], "tasks": [{"task": "tiny_add", "num_fewshot": 10**9}]}}, "num_fewshot"),
        ({"device": "bogus"}, "device"), ({"device": "cuda:999"}, "device"),
        ({"pool": copies}, "at most 128"),
        ({"pool": {**pool, "checkpoints": [ckpt, {"name": "again", "path": ckpt["path"]}]}}, "is used twice"),
        ({"pool": {**pool, "checkpoints": [ckpt, {"name": "again", "path": ckpt["path"] + "/"}]}}, "is used twice"),
    ]
    for i, (extra, reason) in enumerate(cases):
        body = {"name": f"bounded-{i}", **a, "search": {"n_trials": 12}, **extra}
        r = c.post("/v1/studies", json=body, headers=AUTH)
        assert r.status_code == 422 and reason in json.dumps(r.json()["detail"]), (reason, r.text[:300])
    r = c.post("/v1/pools", json={"name": "copies", **copies}, headers=AUTH)
    assert r.status_code == 422 and "at most 128" in json.dumps(r.json()["detail"])
    for header in ({"Last-Event-ID": str(2**63)}, {"Last-Event-ID": str(2**70)}, {"Last-Event-ID": "-1"}):
        r = c.get("/v1/studies/kept/events", params={"follow": "false"}, headers=header)
        assert r.status_code == 422 and "last-event-id" in r.text.lower(), (header, r.text)
    for after in (2**63, 2**70, -1):
        r = c.get("/v1/studies/kept/events", params={"follow": "false", "after": after})
        assert r.status_code == 422 and "after" in r.text, (after, r.text)
    assert stored(c) == before
    # The bounds themselves are accepted, and their events read back (2**63 - 1 is SQLite's and
    # PostgreSQL's largest integer).
    body = {"name": "at-bounds", **a, "priority": 1_000_000, "search": {"n_trials": 12, "seed": 2**32 - 1}}
    assert c.post("/v1/studies", json=body, headers=AUTH).status_code == 201
    r = c.get("/v1/studies/at-bounds/events", params={"follow": "false", "after": 2**63 - 1})
    assert r.status_code == 200 and r.text == ""


def test_paths_that_broke_the_file_system_calls_are_422(client, assets):
    """A NUL byte (ValueError in every os call) and over-long names (ENAMETOOLONG) were 500s."""
    root, a = assets
    c, pool = client, a["pool"]
    before = stored(c)
    bad = {"nul": (str(root / "po\x00ol"), "NUL byte"), "component": (str(root / ("x" * 256)), "at most 255 bytes"),
           "total": ("/" + "/".join(["d" * 200] * 25), "at most 4096 characters")}
    for what, (path, reason) in bad.items():
        bodies = {
            "/v1/pools": [{"name": "p", **pool, "base": path},
                          {"name": "p", **pool, "checkpoints": [*pool["checkpoints"][:2], {"name": "x", "path": path}]}],
            "/v1/suites": [{"name": "s", **a["suite"], "include_path": path}],
            "/v1/studies": [{"name": "s", "pool": {**pool, "base": path}, "suite": a["suite"]}],
            "/v1/studies/kept/trials/0/export": [{"out_dir": path}],
        }
        for route, items in bodies.items():
            for body in items:
                r = c.post(route, json=body, headers=AUTH)
                assert r.status_code == 422 and reason in json.dumps(r.json()["detail"]), (what, route, r.text[:300])
    assert stored(c) == before


def test_nul_bytes_in_urls_and_string_fields_are_4xx(client, assets):
    """PostgreSQL refuses NUL in text: a key, a filter or a string field with one was a 500 there."""
    c, (_, a) = client, assets
    before = stored(c)
    for path in ("/v1/studies?state=a%00b", "/v1/studies/a%00b", "/v1/pools/a%00b", "/v1/suites/a%00b",
                 "/v1/studies/a%00b/trials", "/v1/studies/a%00b/front", "/v1/studies/a%00b/events?follow=false",
                 "/v1/studies/a%00b/trials/1", "/v1/studies/kept/front?split=a%00"):
        r = c.get(path)
        assert r.status_code == 400 and "NUL byte" in r.json()["detail"], (path, r.text)
    assert c.post("/v1/studies/a%00b/pause", headers=AUTH).status_code == 400
    suite = {**a["suite"], "tasks": [{"task": "tiny_add", "metric": "acc\x00"}]}
    for body in ({"name": "n", "pool_id": "a\x00b", "suite_id": "c"}, {"name": "n", "pool": a["pool"], "suite": suite},
                 {"name": "n", **a, "storage": "x\x00"}):
        r = c.post("/v1/studies", json=body, headers=AUTH)
        assert r.status_code == 422 and "NUL byte" in json.dumps(r.json()["detail"]), (body, r.text[:300])
    assert stored(c) == before


def test_a_study_that_cannot_be_set_up_fails_with_its_reason_and_starves_no_one(client, assets):
    """The attack: a study at the highest priority whose set-up fails on every pick (a device the
    worker lacks; a stored spec that is no longer valid, as one with seed 2**70 from before the
    bounds). Before, the worker retried it forever, study.error null, and no other study ran.
    Now each is failed at its first pick, with its reason, and the next pick is the good one."""
    c, (_, a) = client, assets
    body = {"name": "no-such-gpu", **a, "priority": 1_000_000, "device": "cuda:7", "search": {"n_trials": 12}}
    assert c.post("/v1/studies", json=body, headers=AUTH).status_code == 201  # the API cannot know the worker's GPUs
    body = {"name": "old-seed", **a, "priority": 999_999, "search": {"n_trials": 12}}
    assert c.post("/v1/studies", json=body, headers=AUTH).status_code == 201
    with session_factory(c.settings.database_url)() as s:  # as stored before seeds were bounded
        row = registry.get_row(s, Study, "old-seed")
        row.spec = {**row.spec, "search": {**row.spec["search"], "seed": 2**70}}
        s.commit()
    body = {"name": "fine", **a, "priority": 1, "search": {"n_trials": 6, "baselines": False}}  # a quick set-up
    assert c.post("/v1/studies", json=body, headers=AUTH).status_code == 201
    worker = Worker(c.settings, worker_id="poisoned")
    assert worker.run_once() and worker.run_once()
    gpu, seed = c.get("/v1/studies/no-such-gpu").json(), c.get("/v1/studies/old-seed").json()
    assert gpu["state"] == "failed" and "device 'cuda:7' is not usable on worker" in gpu["error"], gpu
    assert seed["state"] == "failed" and "search.seed" in seed["error"], seed
    assert gpu["progress"]["completed"] == seed["progress"]["completed"] == 0
    assert worker.run_once()  # the next pick is the study that can run: set up, a first trial
    fine = c.get("/v1/studies/fine").json()
    assert fine["state"] == "running" and fine["progress"]["completed"] > 0 and fine["error"] is None
    events = [json.loads(line[6:]) for line in c.get("/v1/studies/no-such-gpu/events").text.splitlines()
              if line.startswith("data: ")]
    assert events[-1]["state"] == "failed" and "cuda:7" in events[-1]["error"]


def test_a_worker_given_a_device_it_lacks_refuses_to_start(assets, tmp_path):
    root, _ = assets
    settings = settings_for(root, f"sqlite:///{tmp_path}/w.db")
    for device, reason in (("bogus", "not one of"), ("cuda:7", "not usable")):
        with pytest.raises(RuntimeError, match=reason):
            Worker(settings, device=device)


# ------------------------------------------------------------------------------ finding 9: before the body

def test_auth_is_checked_before_the_body_is_parsed(client, assets):
    """Without a token a bad body was parsed first (422, a parser's view of the input);
    now 401, with a wrong one 403, whatever the body; with a token the body is judged."""
    c = client
    for raw in (b"{not json", b"[" * 100_000, b'{"name": NaN}', b""):
        for route in ("/v1/studies", "/v1/pools", "/v1/studies/kept/pause", "/v1/studies/kept/trials/0/export"):
            r = c.post(route, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 401 and r.json() == {"detail": "missing bearer token"}, (route, r.text[:200])
            assert r.headers["www-authenticate"] == "Bearer"
            r = c.post(route, content=raw, headers={"Content-Type": "application/json", "Authorization": "Bearer nope"})
            assert r.status_code == 403 and r.json() == {"detail": "invalid token"}, (route, r.text[:200])
    assert c.post("/v1/studies", content=b"{not json", headers=JSON).status_code == 422


def test_a_slow_body_is_refused_after_the_timeout(assets, tmp_path):
    """A client that sends its headers and then trickles (or stops sending) its body held a
    request open for as long as it liked; now 408 after MERGEOPT_BODY_TIMEOUT_S, connection
    closed, and an unauthenticated one is refused at once, its body never awaited."""
    root, _ = assets
    settings = settings_for(root, f"sqlite:///{tmp_path}/slow.db").model_copy(update={"body_timeout_s": 1.0})
    with serving(settings) as port:

        def send(head: str, body: bytes, *, trickle: float = 0.0) -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                t0 = time.perf_counter()
                s.sendall(head.encode())
                with contextlib.suppress(OSError):
                    for byte in body:
                        s.sendall(bytes([byte]))
                        time.sleep(trickle)
                out = s.recv(65536)
                took = time.perf_counter() - t0  # to the answer's first bytes
                while chunk := s.recv(65536):
                    out += chunk
                return out, took

        head = "POST /v1/pools HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
        answer, took = send(head + f"Authorization: Bearer {AUTH['Authorization'][7:]}\r\n\r\n", b'{"na', trickle=0.4)
        assert answer.startswith(b"HTTP/1.1 408") and b"MERGEOPT_BODY_TIMEOUT_S" in answer and took < 6, (answer, took)
        answer, took = send(head + "Connection: close\r\n\r\n", b"")  # no token, no body: no wait for it
        assert answer.startswith(b"HTTP/1.1 401") and took < 1, (answer, took)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/pools", timeout=10).json() == []


def test_hosts_outside_the_allow_list_are_400(assets, tmp_path):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 reads an open
    API from the victim's browser; with MERGEOPT_ALLOWED_HOSTS its Host header is refused."""
    root, _ = assets
    url = f"sqlite:///{tmp_path}/hosts.db"
    settings = settings_for(root, url).model_copy(update={"allowed_hosts": ["api.example.org", "*.internal", "127.0.0.1"]})
    with TestClient(create_app(settings)) as c:
        for host in ("evil.example", "api.example.org.evil.example", "internal", "localhost", ""):
            r = c.get("/v1/studies", headers={"Host": host})
            assert r.status_code == 400 and "MERGEOPT_ALLOWED_HOSTS" in r.json()["detail"], (host, r.text)
            assert c.get("/healthz", headers={"Host": host}).status_code == 400
        for host in ("api.example.org", "API.example.org:8000", "a.b.internal", "127.0.0.1:8000"):
            assert c.get("/v1/studies", headers={"Host": host}).status_code == 200, host
    with TestClient(create_app(settings_for(root, url), migrate=False)) as c:  # unset: any host
        assert c.get("/v1/studies", headers={"Host": "evil.example"}).status_code == 200


def test_settings_come_from_the_environment(monkeypatch):
    from service.settings import Settings

    monkeypatch.setenv("MERGEOPT_ALLOWED_HOSTS", "API.example.org, *.internal")
    monkeypatch.setenv("MERGEOPT_MAX_STREAMS", "7")
    monkeypatch.setenv("MERGEOPT_MAX_STREAMS_PER_CLIENT", "2")
    monkeypatch.setenv("MERGEOPT_BODY_TIMEOUT_S", "4.5")
    s = Settings(_env_file=None)
    assert (s.allowed_hosts, s.max_streams, s.max_streams_per_client, s.body_timeout_s) == (
        ["api.example.org", "*.internal"], 7, 2, 4.5)
