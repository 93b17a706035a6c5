"""Errors the client raises: each carries the HTTP status and the server's reason (its `detail`)."""

from __future__ import annotations


class MergeoptError(Exception):
    """Anything the client could not do; ``reason`` is what to show a user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerUnreachable(MergeoptError):
    """No HTTP answer at all (refused, timed out, reset), after the retries."""


class ApiError(MergeoptError):
    """The server answered with an error status; ``reason`` is its ``detail``."""

    status: int = 0

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status, self.reason, self.retry_after = status, reason, retry_after


class Unauthorized(ApiError):
    """401: no token (set MERGEOPT_TOKEN) or 403: a token the server does not accept."""


class NotFound(ApiError):
    """404: no such study, trial, pool or suite."""


class Conflict(ApiError):
    """409: the request does not fit the current state (pausing a finished study, exporting a failed trial...)."""


class Invalid(ApiError):
    """400/413/422: the body, spec, pool, suite or path is refused."""


class Refused(ApiError):
    """403 for a reason other than the token: a path outside the allowed roots, untrusted task code."""


class Busy(ApiError):
    """429/503/507 still answered after the retries."""


class ServerFailed(ApiError):
    """5xx other than 503."""


class StudyFailed(MergeoptError):
    """wait() saw the study end failed or cancelled; ``study`` is its last state."""

    def __init__(self, study) -> None:
        why = f": {study.error}" if study.error else ""
        super().__init__(f"study '{study.name}' {study.state}{why}")
        self.study = study


def error_for(status: int, reason: str, retry_after: float | None = None) -> ApiError:
    if status in (401, 403) and ("token" in reason.lower() or status == 401):
        kind: type[ApiError] = Unauthorized
    else:
        kind = {403: Refused, 404: NotFound, 409: Conflict, 400: Invalid, 413: Invalid, 422: Invalid,
                429: Busy, 503: Busy, 507: Busy}.get(status, ServerFailed if status >= 500 else ApiError)
    return kind(status, reason, retry_after)
