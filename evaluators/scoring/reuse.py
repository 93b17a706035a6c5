"""Evaluation without waste. lm-eval rebuilds every request (few-shot context, Jinja templates
rendered per document) on every ``evaluate()`` call; a study calls it once per trial on the same
documents. Here each task builds its requests once per (limit, samples); later calls only clear
the responses. Scores are computed as before. (Templates compiled once: sandbox.py.)
"""

from __future__ import annotations

import json

from evaluators.adapters import lm_eval as lm_eval_adapter


def reuse_requests(task) -> None:
    """Make ``task.build_all_requests`` build once, then just reset responses."""
    if getattr(task, "_mergeopt_reuse", False):
        return
    original = task.build_all_requests
    built: dict = {}

    def build_once(*, limit=None, samples=None, **kwargs):
        key = (limit, json.dumps(samples, sort_keys=True) if samples is not None else None)
        if key in built:
            lm_eval_adapter.set_task_instances(task, built[key])
            for inst in built[key]:
                inst.resps = []
                inst.filtered_resps = {}
            return
        original(limit=limit, samples=samples, **kwargs)
        built[key] = lm_eval_adapter.task_instances(task)

    task.build_all_requests = build_once
    task._mergeopt_reuse = True

