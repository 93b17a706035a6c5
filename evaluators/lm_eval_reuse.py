"""Evaluation without waste. lm-eval rebuilds every request (few-shot context, Jinja templates
compiled per document) on every ``evaluate()`` call; a study calls it once per trial on the same
documents. Two changes, neither touching how scores are computed:

- each task builds its requests once per (limit, samples); later calls only clear the responses;
- ``lm_eval.utils.apply_template`` compiles each distinct template once instead of per call.
"""

from __future__ import annotations

import functools
import json


def reuse_requests(task) -> None:
    """Make ``task.build_all_requests`` build once, then just reset responses."""
    if getattr(task, "_mergeopt_reuse", False):
        return
    original = task.build_all_requests
    built: dict = {}

    def build_once(*, limit=None, samples=None, **kwargs):
        key = (limit, json.dumps(samples, sort_keys=True) if samples is not None else None)
        if key in built:
            task._instances = built[key]
            for inst in task._instances:
                inst.resps = []
                inst.filtered_resps = {}
            return
        original(limit=limit, samples=samples, **kwargs)
        built[key] = task._instances

    task.build_all_requests = build_once
    task._mergeopt_reuse = True


@functools.cache
def cache_templates() -> None:
    import lm_eval.utils as utils

    compile_once = functools.lru_cache(maxsize=4096)(utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compile_once(template).render(**doc)

    utils.apply_template = apply_template
