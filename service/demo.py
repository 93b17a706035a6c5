"""`mergeopt demo`: the main job on embedded defaults (SQLite, CPU, a tiny pool it builds)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import torch

from optimizer.records import TrialRow, trial_rows
from optimizer.spec import parse_spec
from service.plots import plot_front
from service.report import front_table
from service.studies import run_study


def demo_spec(pool, workdir: Path, n_trials: int) -> dict:
    return {
        "name": "demo",
        "pool": {"base": str(pool.base), "checkpoints": [{"name": n, "path": str(p)} for n, p in pool.checkpoints]},
        "suite": {"include_path": str(pool.include_path), "tasks": pool.tasks, "batch_size": 64},
        "search": {"method": "linear", "sampler": "cmaes", "n_trials": n_trials, "baselines": True},
        "storage": f"sqlite:///{(workdir / 'demo.db').resolve()}",
        "device": "cpu",
    }


def verdict(rows: list[TrialRow]) -> tuple[bool, str]:
    """Did the best searched merge beat the uniform average and every single checkpoint?"""
    done = [r for r in rows if r.state == "COMPLETE"]
    singles = [r for r in done if r.label.startswith("checkpoint:")]
    uniform = next((r for r in done if r.label == "uniform"), None)
    search = [r for r in done if r.kind == "search"]
    if not search or uniform is None or not singles:
        return False, "not enough trials to compare (raise --trials)"
    best = max(search, key=lambda r: r.objective)
    best_single = max(singles, key=lambda r: r.objective)
    ok = best.objective > uniform.objective and best.objective > best_single.objective
    lines = [
        f"best optimized merge: trial {best.number}, mean normalized score {best.objective:.4f}",
        f"uniform average:      {uniform.objective:.4f} ({best.objective - uniform.objective:+.4f})",
        f"best single ({best_single.label.removeprefix('checkpoint:')}): {best_single.objective:.4f} "
        f"({best.objective - best_single.objective:+.4f})",
        "=> the optimized merge beats the uniform average and every single checkpoint"
        if ok else
        "=> the optimized merge did NOT beat every baseline on this run; the front above shows what did",
    ]
    return ok, "\n".join(lines)


def run_demo(workdir: Path, *, n_trials: int = 80, fresh: bool = False, progress: bool = True) -> int:
    from evaluators.demo_pool import build_demo_pool

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[1/3] building (or reusing) the demo pool in {workdir / 'pool'}")
    pool = build_demo_pool(workdir / "pool", progress=progress)
    t_pool = time.perf_counter() - t0
    spec = parse_spec(demo_spec(pool, workdir, n_trials))
    if fresh:
        try:
            optuna.delete_study(study_name=spec.name, storage=spec.storage)
        except KeyError:
            pass
    print(f"[2/3] CMA-ES study '{spec.name}' ({n_trials} trials incl. baselines) in {spec.storage}")
    study = run_study(spec, progress=progress)
    rows, front = trial_rows(study), study.user_attrs["front"]
    print("\nPareto front (normalized per task: held-in / best single checkpoint, held-out / base):")
    print(front_table(rows, front))
    png = plot_front(rows, front, workdir / "front.png", title=f"mergeopt demo: {len(rows)} trials")
    ok, text = verdict(rows)
    print("\n[3/3] " + text)
    total = time.perf_counter() - t0
    print(f"\nplot: {png}\nwall time: {total:.0f} s (pool {t_pool:.0f} s)")
    print(f"inspect: mergeopt front demo --storage {spec.storage}")
    print(f"export:  mergeopt export demo TRIAL OUT_DIR --storage {spec.storage}")
    return 0
