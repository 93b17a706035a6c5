"""The task suite's error and request types, in a module that imports nothing of the project:
scoring.py, task_files.py, task_dict.py and task_box.py all use them (scoring.py re-exports both,
the names callers import)."""

from __future__ import annotations

from dataclasses import dataclass


class SuiteError(ValueError):
    """A problem with the task suite that the user can fix (unknown task, missing metric)."""


@dataclass(frozen=True)
class TaskRequest:
    task: str
    metric: str = "acc,none"  # lm-eval's "<metric>,<filter>" key
    num_fewshot: int | None = None
    higher_is_better: bool | None = None  # None: ask lm-eval
