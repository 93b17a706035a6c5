"""Connections to `serve` (issue 20, finding 7): 1,100 sockets with unfinished headers (no header
timeout) starved every other client, and so would the default 1000 event streams at a 1024
descriptor limit. Now headers must arrive in time, one address holds a bounded number of
connections, and the stream cap stays within the descriptor limit. Against a real uvicorn run
as `mergeopt serve` runs it (connections.py)."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time

import httpx
import uvicorn
from servicekit import settings_for, wait_for

from service.api import connections
from service.api.app import create_app
from service.api.event_hub import EventHub


@contextlib.contextmanager
def serving(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            http=connections.guarded_protocol(settings), timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=60, every=0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_unfinished_headers_time_out_and_one_address_cannot_take_every_connection(tmp_path):
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path}/c.db").model_copy(
        update={"header_timeout_s": 1.0, "max_connections_per_client": 8})
    with serving(settings) as port:
        slow = []
        for _ in range(8):  # slowloris: a request line and one header, then nothing
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(s)
        extra = socket.create_connection(("127.0.0.1", port))
        assert closed_by_server(extra, 5.0), "a ninth connection from one address was kept"
        t0 = time.monotonic()
        assert all(closed_by_server(s, 5.0) for s in slow), "unfinished headers held their connections"
        assert time.monotonic() - t0 < 5.0
        # Freed: the same address is served again, and a finished request is never cut short.
        assert httpx.get(f"http://127.0.0.1:{port}/v1/studies", timeout=10).status_code == 200
        with httpx.Client(timeout=10) as keep:  # keep-alive: idle between requests is uvicorn's own timeout
            assert keep.get(f"http://127.0.0.1:{port}/v1/studies").status_code == 200
            assert keep.get(f"http://127.0.0.1:{port}/v1/studies").status_code == 200
        for s in [*slow, extra]:
            s.close()


def test_the_stream_cap_stays_within_the_descriptor_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path}/s.db")  # MERGEOPT_MAX_STREAMS default: 1000
    assert settings.max_streams == 1000
    hub = EventHub(settings)
    assert hub.max_streams == (1024 - connections.FD_RESERVE) // 2 < 1000
    assert connections.connection_cap() < 1024
