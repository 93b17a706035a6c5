"""Load test, long form: N concurrent clients poll a running study's front and trials on a real
`mergeopt serve` (uvicorn on 127.0.0.1, API + in-process worker, SQLite) for S seconds while the
worker evaluates. The short form runs in the tests (tests/test_load.py, 10 clients x 10 s).

    python bench/load_test.py [--clients 50] [--seconds 60] [--docs 12] [--interval 1.0]

--interval 0 polls back to back (saturation: latency is then mostly queueing, clients / req/s);
--interval S has every client poll once per S seconds, latency counted from when each request
was due.

Loopback only; the request loops stop by themselves after --seconds."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_load import ServedStudy, run_load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--docs", type=int, default=12, help="documents per task of the running study")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between one client's polls (0: back to back)")
    ap.add_argument("--separate-worker", action="store_true", help="serve --no-worker + a `mergeopt worker` process")
    args = ap.parse_args()
    served = ServedStudy(Path(tempfile.mkdtemp(prefix="mergeopt-load-")), n_docs=args.docs, n_trials=5000,
                         separate_worker=args.separate_worker)
    try:
        before = served.study()["progress"]["completed"]
        stats = run_load(served.base, served.paths, clients=args.clients, seconds=args.seconds, interval=args.interval)
        stats["trials_during_run"] = served.study()["progress"]["completed"] - before
    finally:
        served.stop()
    print(json.dumps(stats, indent=2))
    print("| clients | poll interval s | seconds | requests | errors | req/s | p50 ms | p99 ms | max ms | trials done meanwhile |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {stats['clients']} | {stats['interval_s']} | {stats['seconds']} | {stats['requests']} | {stats['errors']} | {stats['rps']} | "
          f"{stats['p50_ms']} | {stats['p99_ms']} | {stats['max_ms']} | {stats['trials_during_run']} |")
    if stats["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
