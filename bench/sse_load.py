"""SSE load test, long form: N SSE clients hold event streams of a running study on a real
`mergeopt serve` (uvicorn on 127.0.0.1, API + in-process worker, SQLite) while P pollers read
its front, its trials and the study list, for S seconds. The short form runs in the tests
(tests/test_load_sse.py, 500 streams + 50 pollers x 10 s).

    python bench/sse_load.py [--streams 500] [--pollers 50] [--seconds 60] [--interval 1.0]

--interval S: each poller polls once per S seconds (0: back to back), latency counted from when
each request was due. Loopback only; everything stops by itself after --seconds."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_load import ServedStudy  # noqa: E402
from test_load_sse import SSE_ENV, run_sse_load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--pollers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between one poller's requests (0: back to back)")
    args = ap.parse_args()
    os.environ.update(SSE_ENV)
    served = ServedStudy(Path(tempfile.mkdtemp(prefix="mergeopt-sse-load-")), n_trials=20_000)
    try:
        stats = run_sse_load(served, sse_clients=args.streams, pollers=args.pollers, seconds=args.seconds,
                             interval=args.interval)
    finally:
        served.stop()
    print(json.dumps(stats, indent=2))
    s, p = stats["streams"], stats["polls"]
    print("| streams open / held | pollers | poll interval s | seconds | requests | errors | req/s | p50 ms | p99 ms "
          "| max ms | events to streams | trials done meanwhile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {s['opened']} / {s['held']} | {p['clients']} | {p['interval_s']} | {p['seconds']} | {p['requests']} | "
          f"{p['errors']} | {p['rps']} | {p['p50_ms']} | {p['p99_ms']} | {p['max_ms']} | {s['events']} | "
          f"{p['trials_during_run']} |")
    if p["errors"] or s["held"] != s["clients"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
