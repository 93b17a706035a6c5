"""Client task code in a box. A task's templates are client code: nested loops hang a thread
(no cancel reaches it), and ``{% set ns.s = ns.s ~ ns.s %}`` in a loop doubles memory per step.
So for a study set up by the service, the tasks are first built in a child process with
resource limits (address space, CPU seconds; a wall clock kept by the parent, which also kills
it on cancel): the child builds them from the checked, staged configs and renders every
template of every task against every document it may be rendered with (evaluation, few-shot),
recording each result or error (render_memo.py). Only if that finishes within its limits does
the worker build the same tasks, replaying the recorded renders: the worker itself never renders
a client template, at set-up or while scoring (process_results renders targets per trial), and
a render the child did not make fails closed.

Children are forked from a forkserver that imported lm-eval and `datasets` once (a clean,
single-threaded process: never a fork of the worker with its model and threads).

What stays in the worker: `datasets` parsing the staged data files (bounded by the staging
budget), Python from the trusted task roots (operator code), and lm-eval's filters and metrics
on the model's outputs (a client regex in a ``filter_list`` runs there, on each generation)."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2.exceptions import TemplateError

from evaluators.adapters import lm_eval as lm_eval_adapter
from evaluators.scoring.suite_types import SuiteError, TaskRequest
from evaluators.scoring.task_dict import check_names, tasks_from_manager
from evaluators.security import render_memo
from evaluators.security.fileguard import Roots
from evaluators.security.lm_eval_guard import guard_lm_eval
from evaluators.security.staging import Staging

PRELOAD = ["evaluators.scoring.suite_scorer", "evaluators.scoring.task_files", "evaluators.security.task_box", "lm_eval.api.task",
           "lm_eval.tasks", "datasets"]


@dataclass(frozen=True)
class BoxLimits:
    """Limits of one study's task build (MERGEOPT_TASK_*)."""

    memory_mb: int = 4096  # address space beyond what the forkserver child starts with
    cpu_s: int = 900
    wall_s: float = 1200.0
    renders_mb: int = 512  # recorded renders kept by the worker


class TaskBoxFailed(SuiteError):
    """The bounded task build failed or exceeded a limit; the message says which."""


class TaskBoxStopped(RuntimeError):
    """The build was stopped (the study was cancelled, or the worker is stopping)."""


@dataclass(frozen=True)
class _Job:
    requests: list[TaskRequest]
    configs: dict
    left: dict
    include_defaults: bool
    limits: BoxLimits
    env: dict


def _manager(configs: dict, left: dict, include_defaults: bool):
    from evaluators.scoring.task_files import _import_functions, _manager_class

    return _manager_class()({p: _import_functions(c) for p, c in configs.items()}, left, include_defaults)


def _limit(limits: BoxLimits) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as fh:
        now = int(fh.read().split()[0]) * page
    cap = now + (limits.memory_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _leaf_tasks(task_dict: dict) -> list:
    out = []
    for value in task_dict.values():
        out.extend(_leaf_tasks(value) if isinstance(value, dict) else [value])
    return out


def _templates(value, found: set[str]) -> set[str]:
    if isinstance(value, str) and render_memo.is_template(value):
        found.add(value)
    elif isinstance(value, list | tuple):
        for v in value:
            _templates(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _templates(v, found)
    return found


def _render_everything(task) -> None:
    """Every template string of the task's config against every document it may meet."""
    docs: list = list(task.eval_docs or [])
    fewshot = task.fewshot_docs() if hasattr(task, "fewshot_docs") else None
    docs += list(fewshot or []) + list(getattr(getattr(task, "sampler", None), "df", None) or [])
    templates = _templates(dict(vars(task.config)), set())
    for template in sorted(templates):
        for doc in docs:
            try:
                lm_eval_adapter.render_template(template, doc)
            except TemplateError:
                pass  # recorded: the worker raises it again if lm-eval renders this


def _child(conn, job: _Job) -> None:
    try:
        _limit(job.limits)
        os.environ.update(job.env)
        guard_lm_eval()  # the child renders client templates: sandboxed, whatever the forkserver imported
        recorder = render_memo.Recorder(job.limits.renders_mb << 20)
        with render_memo.using(recorder):
            manager = check_names([r.task for r in job.requests], _manager(job.configs, job.left, job.include_defaults))
            for task in _leaf_tasks(tasks_from_manager(job.requests, manager)):
                _render_everything(task)
        conn.send(("ok", recorder.renders))
    except MemoryError:
        conn.send(("error", f"building the tasks needed more than its memory limit ({job.limits.memory_mb} MiB, "
                            "MERGEOPT_TASK_MEMORY_MB) or its renders more than MERGEOPT_TASK_RENDERS_MB"))
    except (SuiteError, TemplateError) as exc:  # messages that quote no data
        conn.send(("error", str(exc)))
    except BaseException as exc:  # noqa: BLE001 - anything else by its type only (its text may quote data)
        conn.send(("error", f"building the tasks failed: {type(exc).__name__}"))
    finally:
        conn.close()


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _why_dead(code: int | None, limits: BoxLimits) -> str:
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        return (f"building the tasks used more than {limits.cpu_s} s of CPU (MERGEOPT_TASK_CPU_S) or was killed "
                "(out of memory?)")
    return f"building the tasks ended abnormally (exit code {code}): over its memory limit " \
           f"({limits.memory_mb} MiB, MERGEOPT_TASK_MEMORY_MB)?"


def render_in_box(job: _Job, should_stop: Callable[[], bool] | None = None) -> dict:
    """The child's recorded renders; TaskBoxFailed past a limit, TaskBoxStopped on ``should_stop``."""
    limits = job.limits
    recv, send = _context().Pipe(duplex=False)
    proc = _context().Process(target=_child, args=(send, job), daemon=True, name="mergeopt-task-box")
    proc.start()
    send.close()
    deadline, check_at, result = time.monotonic() + limits.wall_s, 0.0, None
    try:
        while result is None:
            if recv.poll(0.1):
                try:
                    result = recv.recv()
                except EOFError:  # it died without a word: a signal (CPU limit, killed)
                    proc.join(5)
                    raise TaskBoxFailed(_why_dead(proc.exitcode, limits)) from None
            elif not proc.is_alive() and not recv.poll(0):
                raise TaskBoxFailed(_why_dead(proc.exitcode, limits))
            elif time.monotonic() > deadline:
                raise TaskBoxFailed(f"building the tasks took longer than {limits.wall_s:g} s (MERGEOPT_TASK_WALL_S)")
            elif should_stop is not None and time.monotonic() >= check_at:
                check_at = time.monotonic() + 1.0
                if should_stop():
                    raise TaskBoxStopped("the task build was stopped (study cancelled or worker stopping)")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        recv.close()
    kind, payload = result
    if kind != "ok":
        raise TaskBoxFailed(payload)
    return payload


def build_boxed(requests: list[TaskRequest], include: Path, roots: Roots, trusted: Sequence[Path],
                include_defaults: bool, staging: Staging, limits: BoxLimits,
                should_stop: Callable[[], bool] | None = None) -> tuple[dict, render_memo.Replay]:
    """lm-eval's task dict for a service study, built as the module docstring says, and the
    replay its renders go through (SuiteScorer uses it around every evaluation)."""
    from evaluators.scoring.task_files import read_suite

    if not include.is_dir():
        raise SuiteError(f"include_path {include} is not a directory")
    if os.environ.get("HF_HUB_OFFLINE"):
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    configs, left = read_suite(include, roots, trusted, staging=staging)  # checked and staged, not imported
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_"))}
    renders = render_in_box(_Job(requests, configs, left, include_defaults, limits, env), should_stop)
    replay = render_memo.Replay(renders)
    with render_memo.using(replay):
        manager = check_names([r.task for r in requests], _manager(configs, left, include_defaults))
        return tasks_from_manager(requests, manager), replay
