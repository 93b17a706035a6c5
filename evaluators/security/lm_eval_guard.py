"""lm-eval made safe for client tasks, once per process, before it reads or renders one: task
templates render in the sandbox (sandbox.py) and regex filters match under a timeout
(filter_bounds.py). Installed explicitly where tasks are checked or built and where an evaluator
or scorer is set up, never as a side effect of an import; and checked each time, so a change in
how lm-eval looks its renderer up fails here instead of rendering unsandboxed."""

from __future__ import annotations

from evaluators.security import sandbox
from evaluators.security.filter_bounds import bound_filters


class LmEvalUnguarded(RuntimeError):
    """lm-eval does not render through the sandbox after installing it (tests/test_adapters.py)."""


def guard_lm_eval() -> None:
    sandbox.sandbox_templates()  # functools.cache: installed once
    bound_filters()  # the same
    if not sandbox.installed():
        raise LmEvalUnguarded("lm-eval does not render task templates through mergeopt's sandbox "
                              "(evaluators/adapters/lm_eval.py: route_template_rendering)")
