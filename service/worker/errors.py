"""Errors as the service stores and shows them: a study's or a trial's error is read by anyone
who may read studies (without a token unless MERGEOPT_PROTECT_READS), so it names the file and
the kind of failure, never a file's contents, and it must always be storable.

- Messages the project composes itself (pool, suite, spec, set-up errors, refusals) are kept:
  they name files, fields and reasons. Any other exception is named by its type only (its text
  may quote data: a CSV row, a config value); the worker's log has the full message.
- No NUL or other control character (PostgreSQL refuses NUL in text: the study could then be
  neither failed nor skipped), no lone surrogate, at most MAX_ERROR_CHARS characters."""

from __future__ import annotations

import re

MAX_ERROR_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def own_messages() -> tuple[type[BaseException], ...]:
    """Exceptions whose messages this project writes (and keeps free of file contents); imported
    here, not at the top: clean() is for light modules too (the listener)."""
    from evaluators.pool.validation import PoolError
    from evaluators.scoring.suite_scorer import SuiteError
    from evaluators.security.fileguard import FileRefused
    from evaluators.security.staging import StagingError
    from optimizer.spec import SpecError

    return PoolError, SuiteError, SpecError, FileRefused, StagingError


def clean(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` as any database stores it: control characters shown as '?', valid UTF-8, bounded."""
    text = _CONTROL.sub("?", str(text)).encode("utf-8", "replace").decode("utf-8")
    tail = " ...(truncated)"
    return text if len(text) <= limit else text[: limit - len(tail)] + tail


def public_error(exc: BaseException, own: tuple[type[BaseException], ...] = ()) -> str:
    """What to store for ``exc``: its message if the project wrote it, else its type only."""
    if isinstance(exc, own_messages() + own):
        return clean(str(exc))
    return clean(f"{type(exc).__name__} (its message is in the worker's log)")
