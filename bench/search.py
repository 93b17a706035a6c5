"""Search benchmark (not a test): does a study leave its user above the baselines it computed,
and how much of the reachable gain does each search strategy find? On VALIDATION documents.

For every pool (bench/search_pools.py) x strategy x seed it runs one real mergeopt study to the
largest budget. At budget N (every trial counts, set-up included, as `search.n_trials` does):

- the RECOMMENDED merge is what a study recommends after trials 0..N-1 (optimizer/recommend.py:
  set-up's best on search documents unless the search's best beats it there beyond their noise);
  BEST OF ALL is the trial best on search documents, set-up included (the rule before that); the
  SEARCH's best is the best search trial (the rule before that): each is scored on validation
  documents;
- each is compared with the best set-up trial (best on search documents among each checkpoint,
  the base, uniform, TA, TIES, DARE, greedy soups), paired over the same validation documents:
  difference, 95% interval, and the minimum detectable difference (MDD: 2.8 standard errors,
  80% power at the 5% level) of that comparison;
- the REFERENCE is the best merge found at all for the pool: the trial best on search documents
  over a dense cold-start CMA-ES study (a large budget, run once, its SQLite file kept) and every
  cell's studies. "Gap closed" is (recommended - best set-up) / (reference - best set-up), shown
  only where the reference is significantly above the best set-up trial (else there is no gap).

Strategies and pools were fixed before any default was tuned. Set-up trials are the same in
every study of a pool: the evaluator memoizes scores by merge (optimizer/reuse.py's key), so a
pool's set-up is evaluated once.

    python bench/search.py                  # the full run (about an hour on 2 cores)
    python bench/search.py --quick          # a smoke run: 2 pools, 2 strategies, 1 seed, tiny budgets
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from search_pools import POOLS, BenchPool, build_pools  # noqa: E402
from search_report import table  # noqa: E402

from contract.merge import MergeSpec  # noqa: E402
from optimizer import attrs as K  # noqa: E402
from optimizer import ipop  # noqa: E402
from optimizer import records as R  # noqa: E402
from optimizer import validation as V  # noqa: E402
from optimizer.loop import StudyRunner  # noqa: E402
from optimizer.recommend import best_on_search, recommend  # noqa: E402
from optimizer.reuse import candidate_key  # noqa: E402
from optimizer.spec import parse_spec  # noqa: E402
from optimizer.stats import DocScores, compare  # noqa: E402
from service.studies.runs import build_evaluator  # noqa: E402

# Search settings per strategy (over the defaults: cmaes, warm start at the best set-up trial).
FULL_STEP = "full"  # the warm-started run takes CMA-ES' cold step 0.3 min(1, 2/sqrt(d)) (ipop.step)
STRATEGIES: dict[str, dict] = {
    "box": {"weights": "box", "warm_sigma0": FULL_STEP},     # the default before box_local's measurement
    "box_local": {"weights": "box", "warm_sigma0": 0.1},     # the default since (issue 18)
    "gated_local": {"weights": "gated", "warm_sigma0": 0.1},
}
REFERENCE = {"weights": "box", "warm_start": False}        # cold start: independent of set-up
DEFAULT_POOLS = ("recycle8", "recycle16", "weighted_helps", "merge_helps", "single_best", "trajectory")
ROLES = ("recommended", "best_of_all", "search_best")
Z_POWER = 2.8  # (1.96 + 0.84): a true difference of 2.8 SE is detected 80% of the time at 5%


class MemoEvaluator:
    """An evaluator that scores each merge once per benchmark (set-up trials repeat per study),
    seeded from the pool's studies already stored in the workdir (a restarted run redoes nothing)."""

    def __init__(self, inner, stored: list[Path] = ()) -> None:
        self.inner, self.scores, self.valid = inner, {}, {}
        self.last_documents: dict[str, dict] = {}
        for db in stored:
            self._seed(db)

    def _seed(self, db: Path) -> None:
        import optuna

        storage = f"sqlite:///{db}"
        for name in optuna.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            entries = V.stored(study.user_attrs)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                ua = t.user_attrs
                if R.T_CANDIDATE not in ua or R.T_RAW not in ua or ua.get(R.T_FIDELITY, 1.0) != 1.0:
                    continue
                key = candidate_key(MergeSpec.model_validate(ua[R.T_CANDIDATE]))
                if K.TIME_REUSED_FROM not in ua.get(R.T_TIMES, {}) and K.T_SDOCS in ua:
                    self.scores.setdefault((key, 1.0), (dict(ua[R.T_RAW]), _as_given(ua[K.T_SDOCS], ua[R.T_RAW])))
                if "docs" in entries.get(t.number, {}):
                    docs = V.load_docs(entries[t.number])
                    self.valid.setdefault(key, {k: {"score": d.score, "values": d.values.tolist(),
                                                    "aggregation": d.aggregation} for k, d in docs.items()})

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, cand, fidelity: float = 1.0):
        key = (candidate_key(cand), fidelity)
        if key not in self.scores:
            raw = self.inner.evaluate(cand, fidelity) if fidelity < 1 else self.inner.evaluate(cand)
            self.scores[key] = (raw, self.inner.last_documents)
        raw, self.last_documents = copy.deepcopy(self.scores[key])
        return raw

    def validate(self, cand):
        key = candidate_key(cand)
        if key not in self.valid:
            self.valid[key] = self.inner.validate(cand)
        return copy.deepcopy(self.valid[key])


def resolved(strategy: dict, dim: int) -> dict:
    """A strategy's search settings for a space of ``dim`` weights (FULL_STEP made a number)."""
    return {k: (ipop.step(dim) if v == FULL_STEP else v) for k, v in strategy.items()}


def _as_given(stored: dict, raw: dict) -> dict:
    """Stored per-document values (T_SDOCS) in the form an evaluator gives them."""
    docs = {t: DocScores.from_json(d) for t, d in stored.items()}
    return {t: {"score": raw[t], "values": d.values.tolist(), "aggregation": d.aggregation} for t, d in docs.items()}


def study_spec(pool: BenchPool, name: str, search: dict, seed: int, n_trials: int, db: Path, docs: dict) -> dict:
    tasks = [t for t in pool.tasks if t["task"] not in docs.get("skip_tasks", ())]
    return {
        "name": name,
        "pool": {"base": str(pool.base), "checkpoints": [{"name": n, "path": str(p)} for n, p in pool.checkpoints]},
        "suite": {"include_path": str(pool.include_path), "tasks": tasks, "batch_size": 64,
                  "validation": docs["validation"]},  # the rest of the written documents are the search's
        "search": {"method": "linear", "sampler": "cmaes", "n_trials": n_trials, "baselines": True, "seed": seed,
                   **resolved(search, len(pool.checkpoints))},
        "storage": f"sqlite:///{db}",
        "device": "cpu",
    }


class Finished:
    """One finished study read back; validation documents of any of its trials on demand."""

    def __init__(self, runner: StudyRunner) -> None:
        self.runner = runner
        self.rows = [r for r in R.trial_rows(runner.study) if r.state == "COMPLETE" and r.objective is not None]
        self.setup = [r for r in self.rows if r.kind == K.KIND_BASELINE]
        self.best_setup = best_on_search(self.setup)

    def docs(self, row: R.TrialRow) -> dict:
        entries = V.stored(self.runner.study.user_attrs)
        if "docs" not in entries.get(row.number, {}):
            entries[row.number] = self.runner.validation._validate(row.number, row.candidate)
        return V.load_docs(entries[row.number])


def compared(boot, a: dict, b: dict) -> dict:
    c = compare(boot, a, b)
    se = (c.hi - c.lo) / (2 * 1.96)
    return {"diff": c.diff, "lo": c.lo, "hi": c.hi, "significant": c.significant, "mdd": Z_POWER * se}


def run_study(pool: BenchPool, evaluator, name: str, search: dict, seed: int, n_trials: int, workdir: Path,
              docs: dict, keep: bool = False) -> Finished:
    db = workdir / f"{name}.db"
    if not keep:
        db.unlink(missing_ok=True)
    spec = parse_spec(study_spec(pool, name, search, seed, n_trials, db, docs))
    runner = StudyRunner(spec, evaluator, progress=False)
    runner.run()
    return Finished(runner)


def measure_cell(f: Finished, boot, budgets: list[int]) -> dict:
    setup_docs = f.docs(f.best_setup)
    out = {"best_setup": {"trial": f.best_setup.number, "label": f.best_setup.label,
                          "value": boot.summary(setup_docs)["objective"]["value"]},
           "setup_trials": len(f.setup), "budgets": {}}
    spec, attrs = f.runner.spec, f.runner.study.user_attrs
    for b in budgets:
        within = [r for r in f.rows if r.number < b]
        rec = recommend(spec, attrs, within)
        entry = {"rule": rec.to_json()}
        roles = (("recommended", rec.row), ("best_of_all", best_on_search(within)),
                 ("search_best", best_on_search([r for r in within if r.kind == K.KIND_SEARCH])))
        for role, row in roles:
            if row is None:
                entry[role] = None
                continue
            d = f.docs(row)
            entry[role] = {"trial": row.number, "kind": row.kind, "label": row.label, "search_value": row.objective,
                           "value": boot.summary(d)["objective"]["value"], "vs_setup": compared(boot, d, setup_docs),
                           "docs": d}
        out["budgets"][str(b)] = entry
    return out


def _without_docs(cell: dict) -> dict:
    return {**cell, "budgets": {b: {r: (e if r == "rule" or e is None else {k: v for k, v in e.items() if k != "docs"})
                                    for r, e in entry.items()} for b, entry in cell["budgets"].items()}}


def run_bench(*, pools: list[str], strategies: list[str], budgets: list[int], seeds: list[int], docs: dict,
              reference_budget: int, steps_scale: float, workdir: Path, threads: int = 1, log=print,
              on_pool=None) -> dict:
    """Every cell's measurements; ``on_pool(result)`` after each pool (partial results survive)."""
    t0 = time.perf_counter()
    torch.set_num_threads(threads)  # 1: more threads on shared cores are slower (bench/search_pools.py)
    workdir.mkdir(parents=True, exist_ok=True)
    built = build_pools(workdir / "pools", pools, n_docs=docs["search"] + docs["validation"], steps_scale=steps_scale)
    log(f"pools ready in {time.perf_counter() - t0:.0f} s")
    result = {"pools": {}, "budgets": budgets, "seeds": seeds, "docs": docs, "strategies": strategies,
              "reference_budget": reference_budget, "cells": []}
    for name in pools:
        pool, tp = built[name], time.perf_counter()
        first = parse_spec(study_spec(pool, "probe", {}, 0, 2, workdir / "unused.db", docs))
        evaluator = MemoEvaluator(build_evaluator(first, progress=False), sorted(workdir.glob(f"{name}-*.db")))
        ref = run_study(pool, evaluator, f"{name}-reference-b{reference_budget}", REFERENCE, 0, reference_budget,
                        workdir, docs, keep=True)
        boot = V.bootstrap(ref.runner.spec, ref.runner.study.user_attrs)
        finished = [ref]
        cells = []
        for seed in seeds:
            for strategy in strategies:
                ts = time.perf_counter()
                f = run_study(pool, evaluator, f"{name}-{strategy}-s{seed}", STRATEGIES[strategy], seed,
                              max(budgets), workdir, docs)
                finished.append(f)
                cell = {"pool": name, "strategy": strategy, "seed": seed, **measure_cell(f, boot, budgets),
                        "seconds": time.perf_counter() - ts}
                cells.append(cell)
                if on_pool is not None:  # cells so far (without the gap, known once the pool is done)
                    on_pool({**result, "partial": {"pool": name, "cells": [_without_docs(c) for c in cells]}})
                last = cell["budgets"][str(max(budgets))]["recommended"]
                log(f"{name} {strategy} seed {seed}: {cell['seconds']:.0f} s, recommended trial {last['trial']} "
                    f"({last['label']}) {last['value']:.4f}, vs set-up {last['vs_setup']['diff']:+.4f}")
        # The reference: best on search documents over every study of the pool.
        best = max(((f, r) for f in finished for r in f.rows), key=lambda fr: fr[1].objective)
        ref_docs = best[0].docs(best[1])
        setup_docs = ref.docs(ref.best_setup)
        gap = compared(boot, ref_docs, setup_docs)
        result["pools"][name] = {
            "character": pool.character, "checkpoints": len(pool.checkpoints),
            "best_setup": {"label": ref.best_setup.label, "value": boot.summary(setup_docs)["objective"]["value"]},
            "reference": {"study": best[0].runner.spec.name, "trial": best[1].number, "label": best[1].label,
                          "search_value": best[1].objective,
                          "value": boot.summary(ref_docs)["objective"]["value"], "vs_setup": gap},
            "validation_docs": {t: int(i.shape[1]) for t, i in boot.idx.items()},
            "seconds": time.perf_counter() - tp,
        }
        for cell in cells:  # gap closed, then drop the documents (large) from the result
            for entry in cell["budgets"].values():
                for role in ROLES:
                    e = entry.get(role)
                    if e is None:
                        continue
                    e["vs_reference"] = compared(boot, e.pop("docs"), ref_docs)
                    e["gap_closed"] = (e["vs_setup"]["diff"] / gap["diff"]) if gap["significant"] and gap["diff"] > 0 else None
        result["cells"] += cells
        result["seconds"] = time.perf_counter() - t0
        if on_pool is not None:
            on_pool(result)
        log(f"{name}: reference {result['pools'][name]['reference']['label']} "
            f"{gap['diff']:+.4f} [{gap['lo']:+.4f}, {gap['hi']:+.4f}] vs best set-up; {time.perf_counter() - tp:.0f} s")
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", nargs="+", default=list(DEFAULT_POOLS), choices=POOLS)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--budgets", nargs="+", type=int, default=[50, 100, 200])
    ap.add_argument("--table", type=Path, help="print the table of a --json result and exit")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--search-docs", type=int, default=300, help="search documents per task")
    ap.add_argument("--validation-docs", type=int, default=1000, help="validation documents per task")
    ap.add_argument("--reference-budget", type=int, default=300)
    ap.add_argument("--skip-tasks", nargs="*", default=[], help="tasks of the pools left out of the suite")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="training steps of the pools, x the recipe's")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mergeopt-search-bench"))
    ap.add_argument("--json", type=Path, help="write every cell's measurements here")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 pools, 2 strategies, 1 seed, budgets 20/30")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if args.quick:
        args.pools, args.strategies, args.seeds = ["weighted_helps", "recycle8"], ["box", "gated_local"], [0]
        args.budgets, args.reference_budget, args.steps_scale = [20, 30], 30, 0.2
        args.search_docs, args.validation_docs = 40, 60
    logging.getLogger("optuna").setLevel(logging.WARNING)
    save = (lambda r: args.json.write_text(json.dumps(r, indent=2))) if args.json else None
    result = run_bench(pools=args.pools, strategies=args.strategies, budgets=sorted(args.budgets), seeds=args.seeds,
                       docs={"search": args.search_docs, "validation": args.validation_docs,
                             "skip_tasks": args.skip_tasks},
                       reference_budget=args.reference_budget, steps_scale=args.steps_scale, workdir=args.workdir,
                       threads=args.threads, on_pool=save)
    print(table(result))
    print(f"\nwall time: {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
