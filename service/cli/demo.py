"""`mergeopt demo`: the main job on embedded defaults (SQLite, CPU, a tiny pool it builds)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import torch

from evaluators.options import EvaluatorOptions
from optimizer.attrs import V_RECOMMENDED
from optimizer.records import stored_front, trial_rows
from optimizer.spec import SpecError, parse_spec
from optimizer.verdict import study_verdict
from service.studies.plots import plot_study
from service.studies.report import front_table
from service.studies.runs import run_study


def setup_trials(n_checkpoints: int, has_base: bool = True, greedy_soup: bool = True) -> int:
    """Trials a study with baselines runs before its search: each checkpoint alone, the base,
    the merge baselines, and greedy soup's N-1 soups (optimizer/baselines.py, greedy.py)."""
    from optimizer.baselines import merge_baselines

    soups = n_checkpoints - 1 if greedy_soup and n_checkpoints > 2 else 0
    names = [f"c{i}" for i in range(n_checkpoints)]
    return n_checkpoints + int(has_base) + len(merge_baselines(names, has_base)) + soups


def min_demo_trials() -> int:
    """The smallest demo budget: its set-up trials and one search trial."""
    from evaluators.demo.pool import RECIPES

    return setup_trials(len(RECIPES)) + 1


def demo_spec(pool, workdir: Path, n_trials: int) -> dict:
    """Paths resolved: the study stores them, and `front` / `export` run from any folder."""
    def where(p: Path) -> str:
        return str(Path(p).resolve())

    return {
        "name": "demo",
        "pool": {"base": where(pool.base), "checkpoints": [{"name": n, "path": where(p)} for n, p in pool.checkpoints]},
        "suite": {"include_path": where(pool.include_path), "tasks": pool.tasks, "batch_size": 64},
        "search": {"method": "linear", "sampler": "cmaes", "n_trials": n_trials, "baselines": True},
        "storage": f"sqlite:///{(workdir / 'demo.db').resolve()}",
        "device": "cpu",
    }


def run_demo(workdir: Path, *, n_trials: int = 80, fresh: bool = False, progress: bool = True,
             options: EvaluatorOptions | None = None) -> int:
    from evaluators.demo.pool import build_demo_pool

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
    try:
        study = run_study(spec, progress=progress, options=options)
    except SpecError as exc:
        if "already exists" not in str(exc):
            raise
        raise SpecError(f"{exc} (a demo study from another pool or an older mergeopt: "
                        f"`mergeopt demo --workdir {workdir} --fresh` starts it over)") from None
    rows, front = trial_rows(study), stored_front(study)
    verdict = study_verdict(study, rows)
    png = plot_study(rows, front, workdir / "front.png", title=f"mergeopt demo: {len(rows)} trials",
                     pick=verdict and verdict.get(V_RECOMMENDED))
    print("\n[3/3] the front and the verdict (normalized per task: held-in / best single checkpoint, "
          "held-out / base)")
    print(front_table(rows, front, verdict))
    total = time.perf_counter() - t0
    print(f"\nplot: {png}\nwall time: {total:.0f} s (pool {t_pool:.0f} s)")
    print(f"inspect: mergeopt front demo --storage {spec.storage}")
    trial = verdict[V_RECOMMENDED] if verdict and verdict.get(V_RECOMMENDED) is not None else "TRIAL"
    print(f"export the recommended merge: mergeopt export demo {trial} OUT_DIR --storage {spec.storage}")
    return 0
