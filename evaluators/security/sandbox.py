"""Task templates render sandboxed. lm-eval renders every template of a task YAML (doc_to_text,
doc_to_target, doc_to_choice, gen_prefix, ...) with a plain Jinja ``Environment`` in
``lm_eval.utils``, where ``{{ cycler.__init__.__globals__.os.system('...') }}`` runs a command.
``sandbox_templates`` swaps that environment for an ``ImmutableSandboxedEnvironment`` with the
same options and filters: no attribute that starts with an underscore (so no ``__globals__``,
``__class__``, ``__init__``), no method that mutates a list or dict, ranges bounded. lm-eval looks
``utils.env`` and ``utils.apply_template`` up at each call, so every later render goes through it
(adapters/lm_eval.py). Installed explicitly before any task is read (lm_eval_guard.py), which
checks ``installed()`` each time.

``apply_template`` also compiles each distinct template once (lm-eval compiles per document,
and a study renders the same few templates once per document per trial)."""

from __future__ import annotations

import functools

from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from evaluators.adapters import lm_eval as lm_eval_adapter
from evaluators.security import render_memo
from evaluators.security.render_memo import content_free

MAX_PRODUCT = 1 << 20
MAX_POWER_BITS = 1 << 16


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, and no ``'x' * 200000000`` or ``10 ** 10 ** 8``: a product or power whose
    result would exceed MAX_PRODUCT items (characters) or MAX_POWER_BITS bits is refused before
    it is built. (Loops and concatenation are bounded by the task build's process limits.)"""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_PRODUCT:
                    raise SecurityError(f"a task template builds a sequence longer than {MAX_PRODUCT}")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                and right * max(abs(left), 2).bit_length() > MAX_POWER_BITS:
            raise SecurityError(f"a task template computes a number larger than {MAX_POWER_BITS} bits")
        return super().call_binop(context, operator, left, right)


@functools.cache
def sandbox_templates() -> ImmutableSandboxedEnvironment:
    """Install the sandbox as lm-eval's template environment and renderer (once per process)."""
    plain = lm_eval_adapter.template_environment()
    env = BoundedSandbox(
        loader=plain.loader, undefined=plain.undefined, keep_trailing_newline=plain.keep_trailing_newline,
        trim_blocks=plain.trim_blocks, lstrip_blocks=plain.lstrip_blocks, autoescape=plain.autoescape,
    )
    for name, fn in plain.filters.items():  # lm-eval's own (regex_replace) besides Jinja's
        env.filters.setdefault(name, fn)
    for name, fn in plain.tests.items():
        env.tests.setdefault(name, fn)
    compile_once = functools.lru_cache(maxsize=4096)(env.from_string)

    def render(template: str, doc: dict) -> str:
        try:
            return compile_once(template).render(**doc)
        except MemoryError:
            raise  # the task build's memory limit (task_box.py), reported as such
        except Exception as exc:
            raise content_free(exc) from exc

    def apply_template(template: str, doc: dict) -> str:
        memo = render_memo.active()  # a study's renders, made in its bounded child (task_box.py)
        if memo is None or not render_memo.is_template(template):
            return render(template, doc)
        return memo.render(template, doc, render)

    lm_eval_adapter.route_template_rendering(env, apply_template)
    return env


def installed() -> bool:
    """Whether lm-eval renders task templates through the sandbox now."""
    return isinstance(lm_eval_adapter.template_environment(), BoundedSandbox) and \
        getattr(lm_eval_adapter.template_renderer(), "__module__", None) == __name__
