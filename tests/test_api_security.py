"""The API's security surface: a bounded schemathesis run over the OpenAPI schema (no 5xx,
responses match the schema), every route's token scope as documented, tokens never logged or
echoed, database passwords masked on the console. Uses conftest's ``env``: a registered pool,
suite and queued study on SQLite."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from conftest import PG_URL, postgres_reachable
from fastapi.testclient import TestClient
from servicekit import AUTH, settings_for

from service.api.app import create_app
from service.db.migrate import upgrade

# ------------------------------------------------------------------------------ schemathesis

try:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
    )
except ImportError:  # not installed: the test below skips
    schemathesis = None

# Every /v1 operation but two streams: GET .../events is server-sent events (text/event-stream)
# and GET .../trials/{number}/export a .tar.gz download; test_api.py and
# test_service_processes.py cover both. (schemathesis.pytest.from_fixture does not work with
# pytest 9, so each operation is a parametrized test driving Hypothesis itself.)
OPERATIONS = [
    (method.upper(), path)
    for path, methods in create_app(settings_for(Path("/nonexistent"), "sqlite://"), migrate=False).openapi()["paths"].items()
    for method in methods
    if not (method == "get" and path.endswith(("/events", "/trials/{number}/export")))
]
EXAMPLES = 25  # per operation: bounded, about 10 s for the whole schema on 2 cores


@pytest.fixture(scope="module")
def api_schema(env):
    if schemathesis is None:
        pytest.skip("schemathesis is not installed (pip install 'schemathesis>=4,<5')")
    upgrade(env["settings"].database_url)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(env["settings"], migrate=False))


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_openapi_fuzz_no_5xx_and_responses_match_the_schema(api_schema, env, method, path):
    """Generated requests (valid and invalid by the schema) with a valid token, so that the
    handlers and not only the auth check see them: no 5xx, and documented responses (2xx, 422)
    match their schema and content type. Nothing stored changes except through valid creates."""
    strategy = api_schema[path][method].as_strategy()
    if (method, path) == ("POST", "/v1/suites"):
        # A suite without include_path indexes all of lm-eval's built-in tasks (~3 s a request on
        # 2 cores): fuzz folder-based suites only; test_unknown_tasks_and_bad_suites_are_422
        # sends one built-in-index request.
        strategy = strategy.filter(lambda case: not isinstance(case.body, dict) or case.body.get("include_path") is not None)

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(headers=AUTH, checks=[not_a_server_error, response_schema_conformance, content_type_conformance])

    fuzz()


# ------------------------------------------------------------------------------ tokens

def _routes(app) -> list[tuple[str, str]]:
    return [(m.upper(), path) for path, methods in app.openapi()["paths"].items() if path.startswith("/v1") for m in methods]


def _call(client: TestClient, method: str, path: str, headers: dict, root: Path):
    url = path.replace("{key}", "nope").replace("{number}", "0").replace("{action}", "pause")
    body = {"out_dir": str(root / "export-here")} if path.endswith("/export") else {}
    if method == "GET":
        return client.get(url, headers=headers, params={"follow": "false"} if path.endswith("/events") else None)
    return client.post(url, json=body, headers=headers)


@pytest.mark.parametrize("protect_reads", [False, True], ids=["open-reads", "protected-reads"])
def test_every_route_is_scoped_as_documented(env, protect_reads):
    """Mutations always need a token (401 without, 403 wrong); reads need one only with
    MERGEOPT_PROTECT_READS. Checked on every /v1 route the app has, so a new route cannot slip."""
    settings = env["settings"].model_copy(update={"protect_reads": protect_reads, "tokens": ["tok-one", "tok-two"]})
    wrong = {"Authorization": "Bearer tok-on"}  # a prefix of a real token
    with TestClient(create_app(settings, migrate=False), raise_server_exceptions=False) as c:
        routes = _routes(c.app)
        assert len(routes) >= 15
        for method, path in routes:
            guarded = method != "GET" or protect_reads
            none, bad = _call(c, method, path, {}, env["root"]), _call(c, method, path, wrong, env["root"])
            for good in ({"Authorization": "Bearer tok-two"}, {"Authorization": "bearer tok-one"}):
                r = _call(c, method, path, good, env["root"])
                assert r.status_code not in (401, 403) and r.status_code < 500, (method, path, r.status_code, r.text)
            if guarded:
                assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer", (method, path, none.text)
                assert bad.status_code == 403 and bad.json() == {"detail": "invalid token"}, (method, path, bad.text)
            else:
                assert none.status_code not in (401, 403) and bad.status_code not in (401, 403), (method, path)
        # The dashboard pages are shells (data comes from /v1); with protected reads they do not
        # even say whether a study exists.
        pages = [c.get("/studies/kept"), c.get("/studies/nope")]
        assert [p.status_code for p in pages] == ([200, 200] if protect_reads else [200, 404])


def test_tokens_never_appear_in_logs_or_responses(env, caplog):
    """A real uvicorn (debug level, access log on) serving requests with a wrong and a right
    token: neither string shows up in any log record or response body."""
    import logging
    import threading

    import httpx
    import uvicorn

    right, wrong = "right-" + uuid.uuid4().hex, "wrong-" + uuid.uuid4().hex
    settings = env["settings"].model_copy(update={"tokens": [right], "protect_reads": True})
    app = create_app(settings, migrate=False)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="debug", access_log=True,
                                           log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    caplog.set_level(logging.DEBUG)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until = time.monotonic() + 30
        while not server.started and time.monotonic() < wait_until:
            time.sleep(0.05)
        bodies = []
        for token in (wrong, right):
            h = {"Authorization": f"Bearer {token}"}
            for r in (httpx.get(f"{base}/v1/studies", headers=h), httpx.get(f"{base}/v1/studies/kept/trials", headers=h),
                      httpx.post(f"{base}/v1/pools", json={"name": "x", "checkpoints": [{"name": "a", "path": "/etc"}]}, headers=h),
                      httpx.post(f"{base}/v1/studies", content=b"{bad json", headers={**h, "Content-Type": "application/json"}),
                      httpx.post(f"{base}/v1/studies/kept/explode", headers=h)):
                bodies.append(r.text)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    logged = caplog.text + "\n".join(rec.getMessage() + str(rec.args) for rec in caplog.records)
    assert "GET /v1/studies" in logged  # the access log was captured
    assert right not in logged and wrong not in logged
    assert not any(right in b or wrong in b for b in bodies)


def test_database_password_is_masked_on_the_console(capsys):
    """`mergeopt db|serve|worker` print the database URL: never with its password."""
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    from sqlalchemy.engine import make_url

    from service.cli.main import main

    url = make_url(PG_URL).set(password="pw-" + uuid.uuid4().hex).render_as_string(hide_password=False)
    assert main(["db", "current", "--db", url]) == 0  # trust auth: the password is not checked
    out = capsys.readouterr()
    assert "***" in out.out and url.split(":")[2].split("@")[0] not in out.out + out.err
