"""lm-eval's task dict from a task manager: the names checked, then the tasks built. Used by
scoring.py (in the worker) and by task_box.py (in the bounded child), which imports this module
rather than scoring.py so that scoring.py may start the box without an import cycle."""

from __future__ import annotations

import logging

from jinja2.exceptions import TemplateError

from evaluators.scoring.reuse import reuse_requests
from evaluators.scoring.suite_types import SuiteError, TaskRequest
from evaluators.security.lm_eval_guard import guard_lm_eval

log = logging.getLogger("evaluators.scoring.suite_scorer")  # where these messages were always logged


def check_names(names: list[str], manager):
    """``manager``, once every name is one of its tasks (else a SuiteError listing what exists)."""
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        local = sorted(n for n in known if not n.startswith("_"))[:20]
        left = getattr(manager, "left", {})
        skipped = "; left out: " + "; ".join(f"{p.name}: {why}" for p, why in list(left.items())[:3]) if left else ""
        raise SuiteError(f"unknown lm-eval task '{unknown[0]}' (tasks found: {', '.join(local)}{skipped})")
    return manager


def tasks_from_manager(requests: list[TaskRequest], manager) -> dict:
    """lm-eval's task dict for ``requests`` from a manager whose names were checked."""
    from lm_eval.tasks import get_task_dict

    guard_lm_eval()  # building tasks renders their templates (doc_to_choice...)
    names = [r.task for r in requests]
    try:
        task_dict = get_task_dict(names, manager)
    except MemoryError:
        raise  # the task build's memory limit (task_box.py), reported as such
    except (SuiteError, TemplateError) as exc:  # messages that name no data (sandbox.py)
        raise SuiteError(f"cannot load tasks {names}: {exc}") from exc
    except Exception as exc:  # dataset files unreadable...: their text may quote the data
        log.warning("cannot load tasks %s: %s", names, exc)  # the operator's log has it all
        raise SuiteError(f"cannot load tasks {names}: {type(exc).__name__} (the data files could not be "
                         "read as the task says; the worker's log has the details)") from exc
    tasks = task_dict["tasks"] if "tasks" in task_dict else task_dict
    for r in requests:
        if r.num_fewshot is not None:
            tasks[r.task].set_config(key="num_fewshot", value=r.num_fewshot)
    for task in tasks.values():
        reuse_requests(task)
    return task_dict
