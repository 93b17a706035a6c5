"""What a running study tells the outside world (the service turns these into rows and SSE)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class StudyListener(Protocol):
    def trial_started(self, number: int, label: str, candidate: dict) -> None: ...

    def trial_finished(self, number: int, row: dict) -> None: ...

    def trial_failed(self, number: int, error: str) -> None: ...

    def trial_pruned(self, number: int, row: dict) -> None: ...

    def front_changed(self, front: dict) -> None: ...

    def trial_validated(self, number: int, result: dict) -> None: ...


class NullListener:
    def trial_started(self, number: int, label: str, candidate: dict) -> None:
        pass

    def trial_finished(self, number: int, row: dict) -> None:
        pass

    def trial_failed(self, number: int, error: str) -> None:
        pass

    def trial_pruned(self, number: int, row: dict) -> None:
        pass

    def front_changed(self, front: dict) -> None:
        pass

    def trial_validated(self, number: int, result: dict) -> None:
        pass


@contextlib.contextmanager
def no_lock() -> Iterator[None]:
    """Single process: nothing else claims trials of this study."""
    yield
