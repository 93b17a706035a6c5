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
    from evaluators.merging.mergekit_yaml import MergeConfigError
    from evaluators.pool.validation import PoolError
    from evaluators.scoring.suite_scorer import SuiteError
    from optimizer.loop import StudyFailed
    from optimizer.spec import SpecError
    from optimizer.storage import StorageError
    from service.client import MergeoptError  # a server's refusal, with its reason
    from service.studies.paths import PathNotAllowed
    from service.worker.runtime import SetupFailed  # `worker --device` naming a device it lacks

    return (SpecError, PoolError, SuiteError, MergeConfigError, StudyFailed, OSError, PathNotAllowed, StorageError,
            SetupFailed, MergeoptError)


def _print_front(study, split: str = "validation", as_json: bool = False) -> None:
    from optimizer.records import stored_front, trial_rows
    from optimizer.verdict import study_verdict
    from service.studies.report import front_json, front_table

    rows, front = trial_rows(study), stored_front(study, split)
    verdict = study_verdict(study, rows) if front.get("split") == "validation" else None
    print(json.dumps(front_json(rows, front, verdict), indent=2) if as_json else front_table(rows, front, verdict))


def cmd_run(args: argparse.Namespace) -> int:
    from optimizer.spec import load_spec
    from optimizer.storage import check_url
    from service.settings import Settings
    from service.studies.runs import run_study

    spec = load_spec(args.study)
    if args.storage:
        spec = spec.model_copy(update={"storage": args.storage})
    check_url(spec.storage)  # before the pool is loaded, not after
    settings = Settings()  # read now: MERGEOPT_* as this command sees them
    _print_front(run_study(spec, progress=not args.quiet, trusted_task_roots=settings.trusted_task_roots,
                           options=settings.evaluator_options()))
    return 0


def cmd_front(args: argparse.Namespace) -> int:
    from service.cli import remote
    from service.cli.local import stored_url
    from service.studies.runs import open_study

    if remote.server_of(args):
        return remote.front(args)

    study, _ = open_study(args.study, stored_url(args.study, args.storage))
    _print_front(study, args.split, args.json)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from optimizer.carry_over import stored_spec
    from optimizer.recommend import recommend
    from optimizer.records import trial_rows
    from optimizer.spec import SpecError
    from service.cli import remote
    from service.cli.local import stored_url
    from service.studies.runs import export_trial, open_study

    if remote.server_of(args):
        return remote.export(args)
    study, spec = open_study(args.study, stored_url(args.study, args.storage))
    if args.trial == remote.RECOMMENDED:
        best = recommend(stored_spec(study.user_attrs), study.user_attrs, trial_rows(study))
        if best is None:
            raise SpecError(f"study '{spec.name}' has no completed trial yet")
        args.trial = best.row.number
    out = export_trial(study, spec, args.trial, args.out_dir, progress=not args.quiet, options=_evaluator_options())
    print(f"wrote {out} (load with AutoModelForCausalLM.from_pretrained; mergekit: {out / 'mergekit_config.yml'})")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from evaluators.merging.export import write_merge
    from evaluators.merging.mergekit_yaml import parse_mergekit_yaml
    from evaluators.merging.resident import ResidentPool, pick_device
    from evaluators.pool.validation import validate_pool

    config = Path(args.config)
    job = parse_mergekit_yaml(config.read_text(), config.resolve().parent)
    pool = validate_pool(job.checkpoints, job.base)
    resident = ResidentPool(pool, pick_device(args.device), progress=not args.quiet, options=_evaluator_options())
    out = write_merge(resident, job.spec, args.out_dir, out_dtype=job.out_dtype, dtype=job.dtype,
                      progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from service.cli.demo import run_demo

    return run_demo(Path(args.workdir), n_trials=args.trials, fresh=args.fresh, progress=not args.quiet,
                    options=_evaluator_options())


def _evaluator_options():
    """MERGEOPT_MEMORY_BUDGET, _POOL_ON... as this command sees them (service/settings.py)."""
    from service.settings import Settings

    return Settings().evaluator_options()


def _settings(args: argparse.Namespace):
    from optimizer.storage import check_url
    from service.settings import Settings

    overrides = {k: v for k, v in {"database_url": getattr(args, "db", None), "host": getattr(args, "host", None),
                                   "port": getattr(args, "port", None)}.items() if v is not None}
    settings = Settings(**overrides)
    check_url(settings.database_url)
    return settings


def _shown(url: str) -> str:
    """A database URL for the console and logs: the password masked."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_serve(args: argparse.Namespace) -> int:
    import secrets

    import uvicorn

    from service.api.app import create_app
    from service.api.connections import connection_cap, guarded_protocol
    from service.api.serve_policy import check_serve

    settings = check_serve(_settings(args))  # roots needed off loopback; loopback Host names only (api/serve_policy.py)
    if not settings.tokens:
        token = secrets.token_urlsafe(24)
        settings.tokens = [token]
        print(f"no MERGEOPT_TOKENS set: mutating routes accept this token for this run:\n  {token}", file=sys.stderr)
    app = create_app(settings, worker=not args.no_worker, freeze_gc=True)
    where = f"http://{settings.host}:{settings.port}"
    print(f"mergeopt API on {where} (docs: {where}/docs); database {_shown(settings.database_url)}; "
          f"{'no in-process worker' if args.no_worker else 'one in-process worker'}", file=sys.stderr)
    # Header timeout and per-client connection cap (connections.py); below the descriptor limit.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", http=guarded_protocol(settings),
                limit_concurrency=connection_cap())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from service.db.migrate import upgrade
    from service.worker.runtime import Worker

    settings = _settings(args)
    upgrade(settings.database_url)
    worker = Worker(settings, worker_id=args.id, device=args.device)
    print(f"worker {worker.id} on {_shown(settings.database_url)}", file=sys.stderr)
    worker.run_forever(max_idle_s=args.exit_when_idle)
    print(f"worker {worker.id}: ran {worker.trials_run} trials", file=sys.stderr)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from service.db import migrate

    url = _settings(args).database_url
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "base")
    print(f"{_shown(url)}: revision {migrate.current(url) or '(none)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from optimizer.spec import DEFAULT_STORAGE
    from service.cli import help as H
    from service.cli import remote
    from service.cli.init import add_parser as add_init

    p = argparse.ArgumentParser(prog="mergeopt", description="Optimize merge weights over a pool of checkpoints.",
                                formatter_class=H.Formatter, epilog=H.MAIN)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quiet = {"action": "store_true", "help": "no progress bars (errors and the result still print)"}

    def command(name: str, what: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".",
                              formatter_class=H.Formatter, epilog=epilog)

    s = command("demo", "build a tiny pool and run a short CMA-ES study on it (CPU, SQLite)", H.DEMO)
    s.add_argument("--workdir", type=H.workdir, default="mergeopt-demo", help="where the pool, database and plot go")
    s.add_argument("--trials", type=H.demo_trials, default=80, metavar="N",
                   help="trial budget, set-up trials (each checkpoint, the base, baselines) included")
    s.add_argument("--fresh", action="store_true", help="drop the stored demo study and start over (keeps the pool)")
    s.add_argument("-q", "--quiet", **quiet)
    s.set_defaults(func=cmd_demo)

    add_init(sub, H.Formatter, H.examples(("mergeopt init", "writes ./study.yaml"),
                                          ("mergeopt init studies/code-chat.yaml", "study name code-chat"),
                                          ("mergeopt init - | less", "print it")))

    s = command("run", "run one study (YAML) to its budget; resumes if it exists", H.RUN)
    s.add_argument("study", metavar="STUDY.yaml", help="study spec YAML (`mergeopt init` writes one)")
    s.add_argument("--storage", metavar="URL", help="override the spec's storage URL")
    s.add_argument("-q", "--quiet", **quiet)
    s.set_defaults(func=cmd_run)

    s = command("front", "print a study's Pareto front and verdict", H.FRONT)
    s.add_argument("study", metavar="STUDY", help="study YAML, or a study name (with --storage)")
    s.add_argument("--storage", metavar="URL", help=f"storage URL (default: the YAML's, or {DEFAULT_STORAGE})")
    s.add_argument("--json", action="store_true", help="JSON instead of the table: full merges, intervals, search scores")
    s.add_argument("--split", choices=["validation", "search"], default="validation",
                   help="validation: scores on documents the search never saw; search: the documents "
                        "it optimized on (optimistic, for diagnosis)")
    remote.add_server_option(s)
    s.set_defaults(func=cmd_front)

    s = command("export", "write a trial's merge as a HF checkpoint + mergekit_config.yml", H.EXPORT)
    s.add_argument("study", metavar="STUDY", help="study YAML, or a study name (with --storage)")
    s.add_argument("trial", metavar="TRIAL", type=remote.trial_ref,
                   help="trial number (the first column of `mergeopt front`), or 'recommended'")
    s.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must not exist, or be empty)")
    s.add_argument("--storage", metavar="URL", help=f"storage URL (default: the YAML's, or {DEFAULT_STORAGE})")
    s.add_argument("-q", "--quiet", **quiet)
    remote.add_server_option(s)
    s.set_defaults(func=cmd_export)

    remote.add_parsers(command, H.Formatter)

    s = command("merge", "one merge from a mergekit-style YAML", H.MERGE)
    s.add_argument("config", metavar="CONFIG.yml", help="mergekit YAML (merge_method, models, base_model, "
                                                        "parameters, dtype); relative paths: from its folder")
    s.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must not exist, or be empty)")
    s.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:N, mps")
    s.add_argument("-q", "--quiet", **quiet)
    s.set_defaults(func=cmd_merge)

    s = command("serve", "the REST API (uvicorn), with one in-process worker by default")
    s.add_argument("--host", help="bind address (default MERGEOPT_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default MERGEOPT_PORT or 8000)")
    s.add_argument("--db", metavar="URL", help=f"database URL (default MERGEOPT_DATABASE_URL or {DEFAULT_STORAGE})")
    s.add_argument("--no-worker", action="store_true", help="API only: workers run elsewhere")
    s.set_defaults(func=cmd_serve)

    s = command("worker", "claim and evaluate trials of running studies (one per GPU)")
    s.add_argument("--db", metavar="URL", help="database URL (default MERGEOPT_DATABASE_URL)")
    s.add_argument("--device", help="cuda:0, cpu... (default: the study's device)")
    s.add_argument("--id", help="worker name shown in trials and events (default: host-pid-random)")
    s.add_argument("--exit-when-idle", type=float, metavar="SECONDS", help="exit after this long without work")
    s.set_defaults(func=cmd_worker)

    s = command("db", "database migrations (mergeopt's tables; Optuna migrates its own)")
    s.add_argument("action", choices=["upgrade", "downgrade", "current"], help="what to do")
    s.add_argument("revision", nargs="?", help="target revision (default: head for upgrade, base for downgrade)")
    s.add_argument("--db", metavar="URL", help="database URL (default MERGEOPT_DATABASE_URL)")
    s.set_defaults(func=cmd_db)
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
