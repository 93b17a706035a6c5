"""A crowd of SSE clients, run as a process of its own (so that its CPU is not the pollers'):

    python tests/sse_crowd.py BASE PATH --clients 500 --seconds 10

Opens CLIENTS streams of BASE+PATH (raw HTTP/1.1 on loopback, one connection each), prints
"ready N" once all answered, holds them SECONDS more while counting the events received, then
closes them and prints one JSON line: how many opened (200), were refused, failed or were ended
by the server early, and the events they saw. Loopback only; stops by itself."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))


async def one(host: str, port: int, path: str, ready: asyncio.Event, stop_at: list[float], out: dict) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        out["errors"].append(f"connect: {exc}")
        return
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        status = int(head.split()[1])
        if status != 200:
            out["refused"].append(status)
            return
        out["opened"] += 1
        await ready.wait()
        while (left := stop_at[0] - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                out["ended_early"] += 1
                return
            out["events"] += chunk.count(b"\nevent: ")  # every event is "id: N\nevent: T\ndata: ..."
            out["keepalives"] += chunk.count(b": keep-alive")
        out["held"] += 1
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        out["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def crowd(base: str, path: str, clients: int, seconds: float) -> dict:
    url = urlsplit(base)
    assert url.hostname in ("127.0.0.1", "localhost"), "loopback only"
    out = {"clients": clients, "opened": 0, "held": 0, "refused": [], "errors": [], "ended_early": 0, "events": 0,
           "keepalives": 0}
    ready, stop_at = asyncio.Event(), [float("inf")]
    tasks = []
    for _ in range(clients):  # a steady ramp: a burst of 500 SYNs could overflow the listen backlog
        tasks.append(asyncio.create_task(one(url.hostname, url.port, path, ready, stop_at, out)))
        await asyncio.sleep(0.002)
    deadline = time.monotonic() + 120
    while out["opened"] + len(out["refused"]) + len(out["errors"]) < clients and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(f"ready {out['opened']}", flush=True)
    stop_at[0] = time.monotonic() + seconds
    ready.set()
    await asyncio.gather(*tasks)
    out["refused"] = sorted(set(out["refused"]))
    out["first_errors"], out["errors"] = out["errors"][:5], len(out["errors"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("path")
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    raise_fd_limit(args.clients + 256)
    print(json.dumps(asyncio.run(crowd(args.base, args.path, args.clients, args.seconds))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
