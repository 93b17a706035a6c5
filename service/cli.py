"""`mergeopt` console script."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("HF_HUB_OFFLINE"):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")



def _user_errors() -> tuple[type[BaseException], ...]:
    from evaluators.mergekit_yaml import MergeConfigError
    from evaluators.pool import PoolError
    from evaluators.scoring import SuiteError
    from optimizer.loop import StudyFailed
    from optimizer.spec import SpecError

    return (SpecError, PoolError, SuiteError, MergeConfigError, StudyFailed, FileNotFoundError)


def cmd_run(args: argparse.Namespace) -> int:
    from optimizer.records import trial_rows
    from optimizer.spec import load_spec
    from service.report import front_table
    from service.studies import run_study

    spec = load_spec(args.study)
    if args.storage:
        spec = spec.model_copy(update={"storage": args.storage})
    study = run_study(spec, progress=not args.quiet)
    print(front_table(trial_rows(study), study.user_attrs["front"]))
    return 0


def cmd_front(args: argparse.Namespace) -> int:
    from optimizer.records import stored_front, trial_rows
    from service.report import front_json, front_table
    from service.studies import open_study

    study, _ = open_study(args.study, args.storage)
    rows, front = trial_rows(study), stored_front(study)
    print(json.dumps(front_json(rows, front), indent=2) if args.json else front_table(rows, front))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from service.studies import export_trial, open_study

    study, spec = open_study(args.study, args.storage)
    out = export_trial(study, spec, args.trial, args.out_dir, progress=not args.quiet)
    print(f"wrote {out} (load with AutoModelForCausalLM.from_pretrained; mergekit: {out / 'mergekit_config.yml'})")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from evaluators.export import write_merge
    from evaluators.mergekit_yaml import parse_mergekit_yaml
    from evaluators.pool import validate_pool
    from evaluators.resident import ResidentPool, pick_device

    config = Path(args.config)
    job = parse_mergekit_yaml(config.read_text(), config.resolve().parent)
    pool = validate_pool(job.checkpoints, job.base)
    resident = ResidentPool(pool, pick_device(args.device), progress=not args.quiet)
    out = write_merge(resident, job.spec, args.out_dir, out_dtype=job.out_dtype, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(Path(args.workdir), n_trials=args.trials, fresh=args.fresh, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mergeopt", description="Optimize merge weights over a pool of checkpoints.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="build a tiny pool and run a short CMA-ES study on it (CPU, SQLite)")
    s.add_argument("--workdir", default="mergeopt-demo", help="where the pool, database and plot go")
    s.add_argument("--trials", type=int, default=40, help="trial budget, baselines included")
    s.add_argument("--fresh", action="store_true", help="drop the stored demo study and start over")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("run", help="run one study (YAML) to its budget; resumes if it exists")
    s.add_argument("study", help="study spec YAML")
    s.add_argument("--storage", help="override the spec's storage URL")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("front", help="print a study's Pareto front")
    s.add_argument("study", help="study YAML, or a study name (with --storage)")
    s.add_argument("--storage", help="storage URL (default sqlite:///mergeopt.db)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_front)

    s = sub.add_parser("export", help="write a trial's merge as a HF checkpoint + mergekit_config.yml")
    s.add_argument("study", help="study YAML, or a study name (with --storage)")
    s.add_argument("trial", type=int)
    s.add_argument("out_dir")
    s.add_argument("--storage")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("merge", help="one merge from a mergekit-style YAML")
    s.add_argument("config")
    s.add_argument("out_dir")
    s.add_argument("--device", default="auto")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_merge)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: finished trials are stored; run the same command again to resume", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
