"""Multi-fidelity on the demo pool: the same CMA-ES study with and without pruning (successive
halving over 25% -> 50% -> 100% of the documents), side by side in one run. Reports the best
mean normalized score, and the trials and wall time each needed to come within 0.01 (one point)
of the best score either run found.

    python bench/multifidelity.py [--workdir mergeopt-demo] [--trials 80] [--pruner successive_halving]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.demo.pool import build_demo_pool  # noqa: E402
from optimizer.loop import StudyRunner  # noqa: E402
from optimizer.spec import parse_spec  # noqa: E402
from service.cli.demo import demo_spec  # noqa: E402
from service.studies.runs import build_evaluator  # noqa: E402


class Clock:
    """Wraps the evaluator to time-stamp every finished trial (baselines included)."""

    def __init__(self, runner: StudyRunner) -> None:
        self.t0 = time.perf_counter()
        self.marks: list[tuple[int, float, float | None]] = []  # (trials used, seconds, objective)
        original = runner.search._after_trial  # the search phase's bookkeeping after each trial

        def after_trial() -> None:
            original()
            self.mark(runner)

        runner.search._after_trial = after_trial
        original_step = runner.step

        def step():
            result = original_step()
            if result.value == "pruned":
                self.mark(runner)
            return result

        runner.step = step

    def mark(self, runner: StudyRunner) -> None:
        rows = runner.study.get_trials(deepcopy=False)
        done = [t for t in rows if t.state.name in ("COMPLETE", "PRUNED")]
        best = max((t.user_attrs.get("objective", -1) for t in rows if t.state.name == "COMPLETE"), default=None)
        self.marks.append((len(done), time.perf_counter() - self.t0, best))


def run(pool, workdir: Path, n_trials: int, pruner: str) -> Clock:
    db = workdir / f"mf-{pruner}.db"
    db.unlink(missing_ok=True)
    data = demo_spec(pool, workdir, n_trials)
    data.update(name=f"mf-{pruner}", storage=f"sqlite:///{db}")
    data["search"]["pruner"] = pruner
    spec = parse_spec(data)
    runner = StudyRunner(spec, build_evaluator(spec, progress=False), progress=False)
    clock = Clock(runner)
    runner.run()
    return clock


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="mergeopt-demo")
    ap.add_argument("--trials", type=int, default=80)
    ap.add_argument("--pruner", default="successive_halving")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    pool = build_demo_pool(workdir / "pool", progress=False)
    clocks = {"none": run(pool, workdir, args.trials, "none"), args.pruner: run(pool, workdir, args.trials, args.pruner)}
    target = max(c.marks[-1][2] for c in clocks.values()) - 0.01
    print(f"demo pool, {args.trials} trials each (baselines included); target = best of both - 0.01 = {target:.4f}")
    print("| pruner | best | trials to target | seconds to target | total seconds |\n|---|---|---|---|---|")
    for name, c in clocks.items():
        hit = next(((n, s) for n, s, b in c.marks if b is not None and b >= target), None)
        reach = f"{hit[0]} | {hit[1]:.0f}" if hit else "not reached | -"
        print(f"| {name} | {c.marks[-1][2]:.4f} | {reach} | {c.marks[-1][1]:.0f} |")


if __name__ == "__main__":
    main()
