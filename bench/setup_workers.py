"""Wall time of one study's set-up (references, merge baselines, greedy soup, validation of each)
with 1, 2 and 4 `mergeopt worker` processes sharing it, side by side in one run (tiny pool, CPU).
The study's budget is exactly its set-up trials, so the time measured is set-up alone, from the
study's creation (workers already started) to its completion. Runs on a scratch database of its
own on the test PostgreSQL (MERGEOPT_TEST_PG), so no other study is picked up, or on --db.

    python bench/setup_workers.py [--db URL] [--checkpoints 16] [--docs 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from servicekit import AUTH, TOKEN  # noqa: E402

from service.cli.demo import setup_trials  # noqa: E402

from tinypool import make_pool, make_tasks  # noqa: E402


def assets(root: Path, n_checkpoints: int, n_docs: int) -> dict:
    pool = make_pool(root / "pool", n=n_checkpoints, noise=0.3)
    include, tasks = make_tasks(root, n_docs=n_docs)
    return {
        "pool": {"base": str(pool["base"]), "checkpoints": [{"name": n, "path": str(p)} for n, p in pool["checkpoints"]]},
        "suite": {"include_path": str(include), "tasks": [{"task": tasks[0]}, {"task": tasks[1], "split": "held_out"}]},
    }


def setup_time(base: str, env: dict, n_workers: int, study: dict, n_trials: int, logs: Path) -> float:
    """Seconds from creating the study to its completion with ``n_workers`` workers."""
    tag = uuid.uuid4().hex[:6]
    ids = [f"w{i}-{tag}" for i in range(n_workers)]
    workers = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--id", wid, "--exit-when-idle", "3"],
                                env=env, stdout=(logs / f"{wid}.log").open("w"), stderr=subprocess.STDOUT) for wid in ids]
    try:
        for wid in ids:  # each printed its banner: imports done, polling
            while f"worker {wid} on" not in (logs / f"{wid}.log").read_text():
                time.sleep(0.1)
        name = f"setup-{n_workers}w-{tag}"
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/studies", json={"name": name, **study, "search": {"n_trials": n_trials}}, headers=AUTH, timeout=60)
        r.raise_for_status()
        while (s := httpx.get(f"{base}/v1/studies/{name}").json())["state"] not in ("completed", "failed"):
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        assert s["state"] == "completed", s
        trials = httpx.get(f"{base}/v1/studies/{name}/trials").json()
        assert len(trials) == n_trials and all(t["kind"] == "baseline" for t in trials)
        return elapsed
    finally:
        for w in workers:
            w.wait(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=None, help="a database of the bench's own (default: a scratch PostgreSQL one)")
    ap.add_argument("--checkpoints", type=int, default=16)
    ap.add_argument("--docs", type=int, default=100, help="documents per task (2 tasks, 4 choices each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    if args.db is None:
        from conftest import scratch_pg_database

        with scratch_pg_database("mergeopt_bench") as url:
            return run(args, url)
    return run(args, args.db)


def run(args, db: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="mergeopt-bench-"))
    study = assets(root, args.checkpoints, args.docs)
    n_trials = setup_trials(args.checkpoints)
    env = {**os.environ, "MERGEOPT_DATABASE_URL": db, "MERGEOPT_TOKENS": TOKEN, "MERGEOPT_ALLOWED_ROOTS": str(root),
           "MERGEOPT_WORKER_POLL_S": "0.1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--no-worker", "--port", str(port)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        rows = [(n, setup_time(base, env, n, study, n_trials, root)) for n in map(int, args.workers.split(","))]
        print(f"set-up of one study: {args.checkpoints} checkpoints + base, {n_trials} set-up trials and their "
              f"validation, {args.docs} docs/task, {os.cpu_count()} CPU cores, {args.threads} torch thread(s) per worker")
        print("| workers | set-up wall time (s) | speed-up |\n|---|---|---|")
        for n, secs in rows:
            print(f"| {n} | {secs:.1f} | {rows[0][1] / secs:.2f}x |")
    finally:
        api.terminate()
        api.wait(timeout=30)


if __name__ == "__main__":
    main()
