"""Task templates render sandboxed. lm-eval renders every template of a task YAML (doc_to_text,
doc_to_target, doc_to_choice, gen_prefix, ...) with a plain Jinja ``Environment`` in
``lm_eval.utils``, where ``{{ cycler.__init__.__globals__.os.system('...') }}`` runs a command.
``sandbox_templates`` swaps that environment for an ``ImmutableSandboxedEnvironment`` with the
same options and filters: no attribute that starts with an underscore (so no ``__globals__``,
``__class__``, ``__init__``), no method that mutates a list or dict, ranges bounded. lm-eval looks
``utils.env`` and ``utils.apply_template`` up at each call, so every later render goes through it.

``apply_template`` also compiles each distinct template once (lm-eval compiles per document,
and a study renders the same few templates once per document per trial)."""

from __future__ import annotations

import functools

from jinja2.sandbox import ImmutableSandboxedEnvironment


@functools.cache
def sandbox_templates() -> ImmutableSandboxedEnvironment:
    import lm_eval.utils as utils

    plain = utils.env
    env = ImmutableSandboxedEnvironment(
        loader=plain.loader, undefined=plain.undefined, keep_trailing_newline=plain.keep_trailing_newline,
        trim_blocks=plain.trim_blocks, lstrip_blocks=plain.lstrip_blocks, autoescape=plain.autoescape,
    )
    for name, fn in plain.filters.items():  # lm-eval's own (regex_replace) besides Jinja's
        env.filters.setdefault(name, fn)
    for name, fn in plain.tests.items():
        env.tests.setdefault(name, fn)
    compile_once = functools.lru_cache(maxsize=4096)(env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compile_once(template).render(**doc)

    utils.env = env
    utils.apply_template = apply_template
    return env
