"""Search benchmark (not a test): how good is each search strategy's pick on VALIDATION
documents, on pools of known character (bench/search_pools.py), after a given number of trials?

For every pool x strategy x seed it runs one real mergeopt study (SQLite file per run) to the
largest budget. The pick at budget N is the search trial best on SEARCH documents among trials
0..N-1 (a budget counts every trial, baselines included, as `search.n_trials` does), scored on
validation documents; the study validates each new best-so-far as it appears, and any pick left
unvalidated is validated here. Reported per cell (mean over seeds): the pick's validation mean
normalized score and its 95% half-interval, the trials until the pick reaches the best baseline
on validation documents (and that score + its half-interval), and how often the pick is
significantly better than the best baseline (paired bootstrap, optimizer/stats.py compare). The
best baseline is the baseline trial best on search documents (each checkpoint alone, the base,
uniform, TA, TIES, DARE-TIES, greedy soups), as the verdict picks it. `greedy` and `uniform`
are those baselines alone, read from the same studies.

    python bench/search.py                     # the default run (about 20-30 min on 2 busy cores)
    python bench/search.py --budgets 30 60 120 --seeds 0 1 2 3 4 --docs 120 --steps-scale 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from search_pools import POOLS, BenchPool, build_pools  # noqa: E402

from optimizer import records as R  # noqa: E402
from optimizer import validation as V  # noqa: E402
from optimizer.loop import StudyRunner  # noqa: E402
from optimizer.spec import parse_spec  # noqa: E402
from optimizer.stats import compare  # noqa: E402
from service.studies import build_evaluator  # noqa: E402

SEARCHES = {"cmaes": {"sampler": "cmaes"}, "cmaes_layer": {"sampler": "cmaes", "granularity": "LAYER"},
            "tpe": {"sampler": "tpe"}, "gp": {"sampler": "gp"}, "random": {"sampler": "random"}}
BASELINES = ("greedy", "uniform")
STRATEGIES = (*SEARCHES, *BASELINES)


def study_spec(pool: BenchPool, strategy: str, seed: int, n_trials: int, db: Path, layer_groups: int,
               validation: float) -> dict:
    search = {"method": "linear", "n_trials": n_trials, "baselines": True, "seed": seed,
              **SEARCHES.get(strategy, {"sampler": "cmaes"})}
    if search.get("granularity") == "LAYER":
        search["granularity"] = {"layer_groups": layer_groups}
    return {
        "name": f"{pool.name}-{strategy}-s{seed}",
        "pool": {"base": str(pool.base), "checkpoints": [{"name": n, "path": str(p)} for n, p in pool.checkpoints]},
        "suite": {"include_path": str(pool.include_path), "tasks": pool.tasks, "batch_size": 64,
                  "validation": validation},
        "search": search,
        "storage": f"sqlite:///{db}",
        "device": "cpu",
    }


def _by_search(rows: list[R.TrialRow]) -> R.TrialRow | None:
    return max(rows, key=lambda r: (r.objective, r.number), default=None)


class Measured:
    """One finished study read back: validation scores of picks and baselines."""

    def __init__(self, runner: StudyRunner) -> None:
        self.runner = runner
        self.rows = [r for r in R.trial_rows(runner.study) if r.state == "COMPLETE" and r.objective is not None]
        self.boot = V.bootstrap(runner.spec, runner.study.user_attrs)
        if self.boot is None:
            raise RuntimeError("the study has no validation documents (suite.validation is 0)")
        baselines = [r for r in self.rows if r.kind == "baseline"]
        self.best_baseline = _by_search(baselines)
        greedy = [r for r in baselines if r.label.startswith("greedy soup")]
        best_single = _by_search([r for r in baselines if r.label.startswith("checkpoint:")])
        self.greedy = _by_search(greedy + [best_single])  # the final soup (a soup of one: the best checkpoint)
        self.uniform = next(r for r in baselines if r.label == "uniform")
        self.search = sorted((r for r in self.rows if r.kind == "search"), key=lambda r: r.number)

    def docs(self, row: R.TrialRow) -> dict:
        entries = V.stored(self.runner.study.user_attrs)
        if "docs" not in entries.get(row.number, {}):
            # Normally validated by the study itself when it became the best so far.
            entries[row.number] = self.runner.validation._validate(row.number, row.candidate)
        return V.load_docs(entries[row.number])

    def score(self, row: R.TrialRow) -> dict:
        """Validation mean normalized score: value, 95% half-interval, paired difference to the best baseline."""
        obj = self.boot.summary(self.docs(row))["objective"]
        c = compare(self.boot, self.docs(row), self.docs(self.best_baseline))
        return {"trial": row.number, "label": row.label, "value": obj["value"], "half": (obj["hi"] - obj["lo"]) / 2,
                "diff": c.diff, "better": bool(c.significant and c.diff > 0)}

    def pick(self, budget: int) -> R.TrialRow | None:
        return _by_search([r for r in self.search if r.number < budget])

    def trials_to(self, target: float) -> int | None:
        """Trials used when the pick (the best so far on search documents) first scores >= target on validation."""
        best = None
        for r in self.search:
            if best is None or r.objective > best.objective:
                best = r
                if self.score(r)["value"] >= target:
                    return r.number + 1
        return None


def run_cell(pool: BenchPool, evaluator, strategy: str, seed: int, budgets: list[int], workdir: Path,
             layer_groups: int, validation: float) -> dict:
    db = workdir / f"{pool.name}-{strategy}-s{seed}.db"
    db.unlink(missing_ok=True)
    spec = parse_spec(study_spec(pool, strategy, seed, max(budgets), db, layer_groups, validation))
    t0 = time.perf_counter()
    runner = StudyRunner(spec, evaluator, progress=False)
    runner.run()
    m = Measured(runner)
    base = m.score(m.best_baseline)
    out = {"pool": pool.name, "strategy": strategy, "seed": seed, "seconds": time.perf_counter() - t0,
           "best_baseline": base, "setup_trials": len([r for r in m.rows if r.kind == "baseline"]), "budgets": {}}
    if strategy in BASELINES:
        row = m.greedy if strategy == "greedy" else m.uniform
        out["budgets"] = dict.fromkeys(map(str, budgets), m.score(row))
        return out
    for b in budgets:
        pick = m.pick(b)
        out["budgets"][str(b)] = m.score(pick) if pick is not None else None
    out["trials_to_baseline"] = m.trials_to(base["value"])
    out["trials_to_baseline_plus_half"] = m.trials_to(base["value"] + base["half"])
    return out


def run_bench(*, pools: list[str], strategies: list[str], budgets: list[int], seeds: list[int], docs: int,
              steps_scale: float, workdir: Path, layer_groups: int = 3, validation: float = 0.4, threads: int = 1,
              log=print) -> dict:
    """Every cell's measurements. Baseline-only strategies (greedy, uniform) run a CMA-ES study
    of their own to the same budget and read only its baseline trials (simple, at the cost of
    search trials nobody reads)."""
    t0 = time.perf_counter()
    torch.set_num_threads(threads)  # 1: more threads on shared cores are slower (bench/search_pools.py)
    workdir.mkdir(parents=True, exist_ok=True)
    built = build_pools(workdir / "pools", pools, n_docs=docs, steps_scale=steps_scale)
    log(f"pools ready in {time.perf_counter() - t0:.0f} s")
    cells = []
    for name in pools:
        pool = built[name]
        evaluator = None
        for seed in seeds:
            for strategy in strategies:
                if evaluator is None:  # one per pool: the studies differ only in their search
                    first = parse_spec(study_spec(pool, "cmaes", 0, 2, workdir / "unused.db", layer_groups, validation))
                    evaluator = build_evaluator(first, progress=False)
                cell = run_cell(pool, evaluator, strategy, seed, budgets, workdir, layer_groups, validation)
                cells.append(cell)
                b = cell["budgets"][str(max(budgets))]
                log(f"{name} {strategy} seed {seed}: {cell['seconds']:.0f} s, "
                    f"pick {b['value']:.4f} ±{b['half']:.4f}" if b else f"{name} {strategy} seed {seed}: no pick")
    return {"pools": {n: built[n].character for n in pools}, "budgets": budgets, "seeds": seeds, "docs": docs,
            "cells": cells, "seconds": time.perf_counter() - t0}


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def summarize(result: dict) -> list[dict]:
    """One row per pool x strategy, means over seeds."""
    rows = []
    for pool in result["pools"]:
        for strategy in dict.fromkeys(c["strategy"] for c in result["cells"] if c["pool"] == pool):
            cells = [c for c in result["cells"] if c["pool"] == pool and c["strategy"] == strategy]
            row = {"pool": pool, "strategy": strategy, "seeds": len(cells), "budgets": {}}
            for b in map(str, result["budgets"]):
                got = [c["budgets"][b] for c in cells if c["budgets"][b] is not None]
                row["budgets"][b] = None if not got else {
                    "value": _mean([g["value"] for g in got]), "half": _mean([g["half"] for g in got]),
                    "min": min(g["value"] for g in got), "max": max(g["value"] for g in got),
                    "better": sum(g["better"] for g in got), "n": len(got)}
            for key in ("trials_to_baseline", "trials_to_baseline_plus_half"):
                if strategy in BASELINES:
                    row[key] = None
                    continue
                hits = [c[key] for c in cells if c[key] is not None]
                row[key] = {"median": statistics.median(hits) if hits else None, "reached": len(hits), "n": len(cells)}
            base = [c["best_baseline"] for c in cells]
            row["best_baseline"] = {"label": base[0]["label"], "value": _mean([b["value"] for b in base]),
                                    "half": _mean([b["half"] for b in base])}
            rows.append(row)
    return rows


def _reach(r: dict | None) -> str:
    if r is None:
        return "(baseline)"
    return f"{r['median']:g} ({r['reached']}/{r['n']})" if r["median"] is not None else f"not reached (0/{r['n']})"


def table(result: dict) -> str:
    budgets = list(map(str, result["budgets"]))
    head = ["pool", "strategy", *[f"val @{b}" for b in budgets], "trials to best baseline",
            "to baseline + half-CI", f"sig. > best baseline @{budgets[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summarize(result):
        cells = []
        for b in budgets:
            v = row["budgets"][b]
            cells.append("-" if v is None else f"{v['value']:.3f} ±{v['half']:.3f} ({v['min']:.3f}-{v['max']:.3f})")

        last = row["budgets"][budgets[-1]]
        sig = "-" if last is None else f"{last['better']}/{last['n']}"
        cells += [_reach(row["trials_to_baseline"]), _reach(row["trials_to_baseline_plus_half"]), sig]
        lines.append(f"| {row['pool']} | {row['strategy']} | " + " | ".join(cells) + " |")
    bases = {r["pool"]: r["best_baseline"] for r in summarize(result)}
    notes = [f"- {p} ({result['pools'][p]}): best baseline {b['label']}, {b['value']:.3f} ±{b['half']:.3f}"
             for p, b in bases.items()]
    return "\n".join(lines + [""] + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", nargs="+", default=list(POOLS), choices=POOLS)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--budgets", nargs="+", type=int, default=[30, 60])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--docs", type=int, default=60, help="documents written per task (split search/validation)")
    ap.add_argument("--validation", type=float, default=0.4, help="share of documents kept for validation")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="training steps of the pools, x the recipe's")
    ap.add_argument("--layer-groups", type=int, default=3, help="groups for cmaes_layer (3 = per layer here)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mergeopt-search-bench"))
    ap.add_argument("--json", type=Path, help="write every cell's measurements here")
    args = ap.parse_args()
    logging.getLogger("optuna").setLevel(logging.WARNING)
    result = run_bench(pools=args.pools, strategies=args.strategies, budgets=sorted(args.budgets), seeds=args.seeds,
                       docs=args.docs, steps_scale=args.steps_scale, workdir=args.workdir,
                       layer_groups=args.layer_groups, validation=args.validation, threads=args.threads)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nwall time: {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
