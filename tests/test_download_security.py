"""Abandoned export downloads (issue 20, finding 8): six downloads whose clients never read held
466 MB on disk for minutes (the export's slot was given back before the send, and the files were
removed only after it). Now the merge folder goes once archived, the archive's name as soon as
it is open, and its disk when the client disconnects or takes nothing for the send timeout; what
downloads hold in all is capped."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile

import pytest
from fastapi.testclient import TestClient
from servicekit import AUTH, make_assets, settings_for

from service.api.app import create_app
from service.worker.runtime import Worker

DOWNLOAD = "/v1/studies/dl/trials/0/export"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("dl")
    assets = make_assets(root)
    settings = settings_for(root, f"sqlite:///{root}/dl.db").model_copy(
        update={"export_per_client_per_min": 0, "export_send_timeout_s": 1.0})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/v1/studies", json={"name": "dl", **assets, "search": {"n_trials": 1, "baselines": False}}, headers=AUTH)
        assert r.status_code == 201, r.text
        assert Worker(settings, worker_id="w").run_once()
        yield c


def asgi_get(app, path: str, *, client_leaves: bool, timeout: float = 20.0) -> list[dict]:
    """GET ``path`` straight through the ASGI app with a client that takes the response head and
    then no byte more: it either disconnects (``client_leaves``) or just stops reading."""
    sent: list[dict] = []

    async def run() -> None:
        started = asyncio.Event()
        requested = False

        async def receive():
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await started.wait()
            if client_leaves:
                return {"type": "http.disconnect"}
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.start":
                started.set()
            elif message["type"] == "http.response.body":
                await asyncio.sleep(3600)  # flow control: the client reads nothing

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(app(scope, receive, send), timeout)

    asyncio.run(run())
    return sent


@pytest.mark.parametrize("client_leaves", [False, True], ids=["stops-reading", "disconnects"])
def test_an_abandoned_download_frees_its_disk(app, tmp_path, monkeypatch, client_leaves):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sent = asgi_get(app.app, DOWNLOAD, client_leaves=client_leaves)
    assert sent and sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200, sent[:1]
    assert not list(tmp_path.glob("mergeopt-export-*")), "the download's files outlived it"
    assert app.app.state.disk_ledger.held == 0


def test_downloads_in_progress_are_capped_on_disk(app, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ledger = app.get(DOWNLOAD) and app.app.state.disk_ledger
    ledger.reserve(ledger.cap - 1)  # as if downloads held nearly all of it
    try:
        r = app.get(DOWNLOAD)
        assert r.status_code == 429 and "MERGEOPT_EXPORT_DISK_MB" in r.json()["detail"], r.text
        assert int(r.headers["retry-after"]) > 0
    finally:
        ledger.release(ledger.cap - 1)
    assert app.get(DOWNLOAD).status_code == 200
    assert not list(tmp_path.glob("mergeopt-export-*")) and ledger.held == 0
