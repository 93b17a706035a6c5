"""lm-eval's regex filters (``filter_list`` in a task YAML: ``regex``, ``multi_choice_regex``)
run a client's pattern on every generation, in the worker, while a trial is scored: a pattern
like ``(a|aa)+$`` backtracks for hours on a long output and Python's ``re`` cannot be
interrupted. Here lm-eval's filter module matches with the ``regex`` package instead (re's
syntax), each match, search or substitution bounded by MATCH_TIMEOUT_S: beyond, TimeoutError
and the trial fails, naming no output."""

from __future__ import annotations

import functools

import regex

MATCH_TIMEOUT_S = 2.0
_TIMED = ("search", "match", "fullmatch", "findall", "finditer", "sub", "subn", "split")


class TimedPattern:
    """A compiled pattern whose matching methods carry the timeout."""

    def __init__(self, pattern) -> None:
        self._pattern = pattern

    def __getattr__(self, name: str):
        value = getattr(self._pattern, name)
        return functools.partial(value, timeout=MATCH_TIMEOUT_S) if name in _TIMED else value


class TimedRe:
    """The part of ``re`` lm-eval's filters use, matching with the ``regex`` package under a timeout."""

    escape = staticmethod(regex.escape)
    IGNORECASE, MULTILINE, DOTALL = regex.IGNORECASE, regex.MULTILINE, regex.DOTALL
    error = regex.error

    @staticmethod
    def compile(pattern, flags: int = 0) -> TimedPattern:
        return TimedPattern(regex.compile(pattern, flags | regex.VERSION0))

    def __getattr__(self, name: str):
        if name in _TIMED:
            return lambda pattern, *args, flags=0, **kw: getattr(self.compile(pattern, flags), name)(*args, **kw)
        raise AttributeError(name)


@functools.cache
def bound_filters() -> None:
    """From now on, lm-eval's extraction filters match under the timeout (once per process)."""
    from evaluators.adapters import lm_eval as lm_eval_adapter

    lm_eval_adapter.replace_filter_regex_module(TimedRe())
