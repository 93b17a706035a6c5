"""Trials per minute with 1 vs 2 `mergeopt worker` processes on one study (tiny pool, CPU),
measured side by side in one run. Needs PostgreSQL (default: the test database on 127.0.0.1).

    python bench/workers_throughput.py [--db URL] [--trials 40] [--threads 1] [--docs 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from servicekit import AUTH, TOKEN, make_assets  # noqa: E402


def search_throughput(base: str, name: str, env: dict, n_workers: int, assets: dict, n_trials: int) -> tuple[float, int]:
    """Create a study, start ``n_workers`` worker processes, time the search phase only
    (references and baselines are set-up that one worker does before the others join)."""
    r = httpx.post(f"{base}/v1/studies", json={"name": name, **assets, "search": {"n_trials": n_trials}}, headers=AUTH, timeout=60)
    r.raise_for_status()
    workers = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--id", f"w{i}", "--exit-when-idle", "5"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n_workers)]
    try:
        t_start, n_start = None, 0
        while True:
            s = httpx.get(f"{base}/v1/studies/{name}").json()
            done = s["progress"]["completed"]
            if t_start is None and done >= 9:  # 4 references/singles + base + 4 baselines in
                t_start, n_start = time.perf_counter(), done
            if s["state"] in ("completed", "failed"):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t_start
        return (done - n_start) / elapsed * 60, done - n_start
    finally:
        for w in workers:
            w.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--docs", type=int, default=200, help="documents per task (2 tasks, 4 choices each)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mergeopt-bench-"))
    assets = make_assets(root, n_docs=args.docs)
    env = {**os.environ, "MERGEOPT_DATABASE_URL": args.db, "MERGEOPT_TOKENS": TOKEN, "MERGEOPT_ALLOWED_ROOTS": str(root),
           "MERGEOPT_WORKER_POLL_S": "0.1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    port = 8765
    api = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--no-worker", "--port", str(port)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        rows = []
        for n in (1, 2):
            tpm, count = search_throughput(base, f"bench-{n}w-{uuid.uuid4().hex[:6]}", env, n, assets, args.trials)
            rows.append((n, tpm, count))
        print("| workers | search trials | trials/min | speed-up |\n|---|---|---|---|")
        for n, tpm, count in rows:
            print(f"| {n} | {count} | {tpm:.0f} | {tpm / rows[0][1]:.2f}x |")
    finally:
        api.terminate()
        api.wait(timeout=30)


if __name__ == "__main__":
    main()
