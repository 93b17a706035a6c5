"""Bounded load on loopback: concurrent clients poll a running study's front and trials on a real
`mergeopt serve` (uvicorn, API + its in-process worker, SQLite) while the worker evaluates.

Short form here (10 clients x 10 s, 0 errors required, p50/p99 printed); the long form is
bench/load_test.py (50 clients x 60 s). Traffic goes to 127.0.0.1 only and stops by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from servicekit import AUTH, TOKEN, make_assets, wait_for


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _get(client: httpx.AsyncClient, path: str, t0: float, latencies: list[float], errors: list[str]) -> None:
    try:
        r = await client.get(path)
        if r.status_code != 200:
            errors.append(f"{path}: {r.status_code} {r.text[:200]}")
        else:
            r.json()
            latencies.append(time.perf_counter() - t0)
    except (httpx.HTTPError, ValueError) as exc:
        errors.append(f"{path}: {type(exc).__name__}: {exc}")


async def _client(client: httpx.AsyncClient, paths: list[str], start: float, stop_at: float, latencies: list[float],
                  errors: list[str], interval: float, phase: float) -> None:
    i, due = 0, start + phase
    while time.perf_counter() < stop_at:
        path = paths[i % len(paths)]
        i += 1
        if interval > 0:
            # Fixed rate: latency counts from when the request was due, so a slow answer that
            # delays the next request is charged to it (no coordinated omission).
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            t0, due = due, due + interval
        else:
            t0 = time.perf_counter()
        await _get(client, path, t0, latencies, errors)


def run_load(base: str, paths: list[str], clients: int, seconds: float, interval: float = 0.0) -> dict:
    """``clients`` concurrent keep-alive clients, each cycling through ``paths`` for ``seconds``:
    back to back (``interval`` 0, a saturation test) or one request every ``interval`` seconds
    (polling, phases spread evenly). Clients connect and make one untimed request first, so the
    clock starts with all of them ready. Returns request count, errors, latency percentiles (ms)."""
    assert base.startswith(("http://127.", "http://localhost")), "load goes to loopback only"
    latencies: list[float] = []
    errors: list[str] = []

    async def main() -> float:
        """Seconds the timed part took."""
        pool = [httpx.AsyncClient(base_url=base, timeout=30) for _ in range(clients)]
        try:
            await asyncio.gather(*(_get(c, paths[0], 0.0, [], errors) for c in pool))  # untimed warm-up
            start = time.perf_counter()
            await asyncio.gather(*(_client(c, paths[k % len(paths):] + paths[:k % len(paths)], start, start + seconds,
                                           latencies, errors, interval, interval * k / clients)
                                   for k, c in enumerate(pool)))
            return time.perf_counter() - start
        finally:
            await asyncio.gather(*(c.aclose() for c in pool))

    wall = asyncio.run(main())
    ms = [x * 1000 for x in latencies]
    return {
        "clients": clients, "interval_s": interval, "seconds": round(wall, 1), "requests": len(ms) + len(errors), "errors": len(errors),
        "first_errors": errors[:5], "rps": round((len(ms) + len(errors)) / wall, 1),
        "p50_ms": round(percentile(ms, 50), 1) if ms else None, "p99_ms": round(percentile(ms, 99), 1) if ms else None,
        "max_ms": round(max(ms), 1) if ms else None,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedStudy:
    """`mergeopt serve` (API + in-process worker) on SQLite under ``root``, with one long study
    running; ``stop()`` cancels it and stops the server."""

    def __init__(self, root: Path, *, n_docs: int = 12, n_trials: int = 400, name: str = "load",
                 separate_worker: bool = False) -> None:
        self.root, self.name = root, name
        assets = make_assets(root, n_docs=n_docs)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MERGEOPT_DATABASE_URL": f"sqlite:///{root}/load.db", "MERGEOPT_TOKENS": TOKEN,
               "MERGEOPT_ALLOWED_ROOTS": str(root), "MERGEOPT_WORKER_POLL_S": "0.2", "HF_HUB_OFFLINE": "1"}
        self.log = (root / "serve.log").open("w")
        extra = ["--no-worker"] if separate_worker else []
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), *extra],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env, stdout=self.log,
                                       stderr=subprocess.STDOUT) if separate_worker else None
        try:
            wait_for(self._up, timeout=90, every=0.2)
            r = httpx.post(f"{self.base}/v1/studies", json={"name": name, **assets, "search": {"n_trials": n_trials}},
                           headers=AUTH, timeout=60)
            assert r.status_code == 201, r.text
            # Search under way: references and baselines stored, the front has entries.
            wait_for(lambda: self.study()["progress"]["completed"] >= 8 and self.study()["state"] == "running", timeout=180)
        except BaseException:
            self.stop()
            raise
        self.paths = [f"/v1/studies/{name}/front", f"/v1/studies/{name}/trials"]

    def _up(self) -> bool:
        assert self.proc.poll() is None, (self.root / "serve.log").read_text()
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def study(self) -> dict:
        return httpx.get(f"{self.base}/v1/studies/{self.name}", timeout=30).json()

    def stop(self) -> None:
        try:
            httpx.post(f"{self.base}/v1/studies/{self.name}/cancel", headers=AUTH, timeout=10)
        except httpx.HTTPError:
            pass
        if self.worker is not None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_forty_clients_polling_a_running_study_see_no_errors(tmp_path):
    # 40 clients: more than the database connection pool (15) and as many as FastAPI's thread
    # pool, so a request that needs two connections at once would starve the pool here.
    served = ServedStudy(tmp_path)
    try:
        before = served.study()["progress"]["completed"]
        stats = run_load(served.base, served.paths, clients=40, seconds=10)
        after = served.study()
    finally:
        served.stop()
    print(f"\nload (40 clients x 10 s, API + in-process worker, SQLite): {stats}; "
          f"trials completed during the run: {after['progress']['completed'] - before}")
    assert stats["errors"] == 0, stats["first_errors"]
    assert stats["requests"] >= 50, stats
    assert after["state"] == "running"  # the study was evaluating throughout
