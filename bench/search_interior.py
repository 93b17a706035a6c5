"""Parameterization check on analytic pools (not a test; seconds per study, no models).

bench/search.py measures strategies on trained pools, where a study costs minutes. This runs the
same strategies on analytic pools of three characters, so many seeds are cheap and the best
point is known: scores are 1 - k ||p - target_t||^2 with p the normalized weights
(tests/fakes.py's QuadraticPool: exact, no noise, so any difference is the search's own).

- interior: every member contributes to the best mixture (the mean of the search tasks'
  targets puts weight on all four);
- sparse: the best mixture is half-half of two members, the other two left out;
- vertex: one member alone is best (every mixture loses).

For each pool x strategy x seed one study runs to the largest budget; at each budget the best
objective among trials 0..N-1 (set-up included: the recommended merge) is read. Regret is the
pool's best objective over every study minus that; lower is better.

    python bench/search_interior.py [--seeds 6] [--budgets 41 81] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

import search  # noqa: E402

from optimizer.loop import StudyRunner  # noqa: E402
from optimizer.records import trial_rows  # noqa: E402
from optimizer.spec import parse_spec  # noqa: E402

from fakes import QuadraticPool  # noqa: E402

NAMES = ["a", "b", "c", "d"]
POOLS = {  # targets per search task; the pool's best mixture is their mean
    "interior": {"x": [0.6, 0.4, 0.0, 0.0], "y": [0.2, 0.2, 0.6, 0.0], "w": [0.4, 0.1, 0.2, 0.3]},
    "sparse": {"x": [0.7, 0.3, 0.0, 0.0], "y": [0.3, 0.7, 0.0, 0.0]},
    "vertex": {"x": [1.0, 0.0, 0.0, 0.0], "y": [1.0, 0.0, 0.0, 0.0]},
}
# bench/search.py's strategies, plus gated weights with CMA-ES' full warm step.
STRATEGIES = {**search.STRATEGIES, "gated_wide": {"weights": "gated", "warm_sigma0": 0.3}}


def run_study(targets: dict, strategy: dict, seed: int, n_trials: int, folder: Path) -> list[float]:
    """Objectives of trials 0..n-1 in order (set-up first)."""
    spec = parse_spec({
        "name": "b", "storage": f"sqlite:///{folder}/b.db",
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
        "suite": {"tasks": [{"task": t} for t in targets]},
        "search": {"n_trials": n_trials, "seed": seed, **search.resolved(strategy, len(NAMES))},
    })
    runner = StudyRunner(spec, QuadraticPool(NAMES, targets, k=2.0), progress=False)
    runner.run()
    rows = sorted(trial_rows(runner.study), key=lambda r: r.number)
    return [r.objective if r.state == "COMPLETE" and r.objective is not None else -np.inf for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--budgets", type=int, nargs="+", default=[41, 81])
    ap.add_argument("--pools", nargs="+", default=list(POOLS), choices=list(POOLS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.disable(logging.WARNING)
    best: dict = {}  # pool -> strategy -> budget -> [best objective per seed]
    for pool in args.pools:
        for name, strategy in STRATEGIES.items():
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as tmp:
                    objs = run_study(POOLS[pool], strategy, seed, max(args.budgets), Path(tmp))
                for b in args.budgets:
                    best.setdefault(pool, {}).setdefault(name, {}).setdefault(b, []).append(max(objs[:b]))
    out = {"seeds": args.seeds, "budgets": args.budgets, "pools": {}}
    print("| pool | strategy | " + " | ".join(f"regret at {b} (mean, max)" for b in args.budgets) + " |")
    print("|---|---|" + "---|" * len(args.budgets))
    for pool, by_strategy in best.items():
        top = max(v for s in by_strategy.values() for b in s.values() for v in b)
        out["pools"][pool] = {"best": top, "strategies": by_strategy}
        for name, by_budget in by_strategy.items():
            cells = [f"{np.mean(top - np.array(v)):.4f}, {np.max(top - np.array(v)):.4f}" for v in by_budget.values()]
            print(f"| {pool} | {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
