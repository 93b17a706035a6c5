"""What a study's phases tell the person running it: a progress bar when `mergeopt run` shows one
(log lines otherwise), and the count of failed trials, which ends the study past the limit."""

from __future__ import annotations

import logging

import optuna
from tqdm.auto import tqdm

from optimizer.records import trials

log = logging.getLogger("optimizer.loop")  # the logger these lines always came from


class StudyFailed(RuntimeError):
    """Too many trials failed; the last error says why."""


class Progress:
    def __init__(self, study: optuna.Study, *, max_failures: int) -> None:
        self.study = study
        self.max_failures = max_failures
        self.failures = 0
        self._bar: tqdm | None = None

    def open(self, *, total: int, desc: str, enabled: bool) -> None:
        self._bar = tqdm(total=total, desc=desc, unit="trial", disable=not enabled)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _shown(self) -> bool:
        return self._bar is not None and not self._bar.disable

    def warn(self, message: str) -> None:
        if self._shown():
            self._bar.write(f"warning: {message}")
        else:
            log.warning(message)

    def note(self, message: str) -> None:
        if self._shown():
            self._bar.write(message)
        else:
            log.info(message)

    def fail_note(self, message: str) -> None:
        """A trial (or set-up unit, or validation) failed: warn; past the limit, end the study."""
        self.failures += 1
        self.warn(message)
        if self.failures >= self.max_failures:
            raise StudyFailed(f"{self.failures} trials failed; last: {message}")

    def tick(self, note: str) -> None:
        if self._bar is not None:
            self._bar.n = len(trials(self.study))
            self._bar.set_postfix_str(note)
            self._bar.refresh()
