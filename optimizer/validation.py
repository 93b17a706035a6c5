"""Validation documents: where every reported score is measured.

The search (sampler, pruner, warm start) only ever sees scores on the search documents. Each
reference and baseline, every trial that is on the search-split Pareto front when a worker
looks, and the search trial best on search documents (the verdict's pick), is scored once more on the validation documents, which the search never saw. Those scores
carry intervals (documents resampled, stats.py) and make the validation front.

Storage: Optuna allows no writes to a finished trial, so a trial's validation lives in the
study's user attributes, one key per trial (``val:N``: per-document values and their summary).
Work is claimed like trials are (``valclaim:N`` under the study lock, kept alive by a heartbeat
thread); a claim whose heartbeat stopped for the grace period is taken over, so a killed worker's
validation is redone once and a finished one is never redone."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from optimizer.attrs import (
    A_DIRECTIONS,
    A_VFRONT,
    A_VREFS,
    BASE_LABEL,
    VAL,
    VAL_CLAIM,
    VAL_DOCS,
    VAL_SUMMARY,
    checkpoint_label,
)
from optimizer.claims import Claims as WorkClaims
from optimizer.front import front_hypervolume, non_dominated
from optimizer.spec import StudySpec
from optimizer.stats import Bootstrap, DocScores, TaskTerm

__all__ = ["A_VFRONT", "A_VREFS", "Claims", "bootstrap", "claim_key", "front", "load_docs", "reference_trials",
           "stored", "task_terms", "to_docs", "val_key"]


def val_key(number: int) -> str:
    return f"{VAL}{number}"


def claim_key(number: int) -> str:
    return f"{VAL_CLAIM}{number}"


def stored(attrs: Mapping) -> dict[int, dict]:
    """Trial number -> its stored validation."""
    return {int(k[len(VAL):]): v for k, v in attrs.items() if k.startswith(VAL)}


def to_docs(out: Mapping[str, Mapping], tasks: list[str]) -> dict[str, DocScores]:
    """An evaluator's validation output as DocScores, checked against the score it reports."""
    docs = {}
    for task in tasks:
        if task not in out:
            raise RuntimeError(f"evaluator returned no validation documents for task '{task}'")
        d = DocScores(out[task]["values"], out[task]["aggregation"])
        if not math.isclose(d.score, out[task]["score"], rel_tol=1e-6, abs_tol=1e-9):
            raise RuntimeError(f"task '{task}': per-document values aggregate to {d.score}, "
                               f"the evaluator reports {out[task]['score']}")
        docs[task] = d
    return docs


def load_docs(entry: Mapping) -> dict[str, DocScores]:
    return {t: DocScores.from_json(d) for t, d in entry[VAL_DOCS].items()}


def reference_trials(spec: StudySpec, singles: Mapping[str, Mapping[str, float]],
                     directions: Mapping[str, bool], label_to_number: Mapping[str, int]) -> dict[str, int | None]:
    """Each task's reference on validation documents: its expert (the best single checkpoint on
    the SEARCH documents, as the search normalizes) or the base; None when unnormalized."""
    out: dict[str, int | None] = {}
    for t in spec.suite.tasks:
        if t.normalization == "expert":
            pick = max if directions.get(t.task, True) else min
            name = pick(singles, key=lambda n, task=t.task: singles[n][task])
            out[t.task] = label_to_number[checkpoint_label(name)]
        elif t.normalization == "base":
            out[t.task] = label_to_number[BASE_LABEL]
        else:
            out[t.task] = None
    return out


def bootstrap(spec: StudySpec, attrs: Mapping) -> Bootstrap | None:
    """The study's resampling (one set of document draws per task, references attached), or
    None until every reference has its validation scores."""
    vrefs = attrs.get(A_VREFS)
    if vrefs is None:
        return None
    entries = stored(attrs)
    if not entries or any(n is not None and n not in entries for n in vrefs.values()):
        return None
    refs = {t.task: None if vrefs.get(t.task) is None else
            DocScores.from_json(entries[vrefs[t.task]][VAL_DOCS][t.task]) for t in spec.suite.tasks}
    counts = {t.task: next(iter(entries.values()))[VAL_DOCS][t.task]["n"] for t in spec.suite.tasks}
    return Bootstrap(task_terms(spec, attrs.get(A_DIRECTIONS) or {}, refs), counts)


def task_terms(spec: StudySpec, directions: Mapping[str, bool], refs: Mapping[str, DocScores | None]) -> list[TaskTerm]:
    """How each task enters the objective, normalized by ``refs`` (per-document values of its
    reference on the documents being resampled; None: unnormalized)."""
    weighted = spec.search.objective == "weighted"
    return [TaskTerm(t.task, t.weight if weighted else 1.0, directions.get(t.task, True), refs[t.task], t.chance)
            for t in spec.suite.tasks]


def front(spec: StudySpec, attrs: Mapping, complete: set[int]) -> dict:
    """Non-dominated validated trials over their validation normalized scores."""
    tasks = spec.task_names
    done = sorted((n, e[VAL_SUMMARY]) for n, e in stored(attrs).items() if VAL_SUMMARY in e and n in complete)
    empty = {"split": "validation", "tasks": tasks, "trials": [], "hypervolume": 0.0, "reference_point": [0.0] * len(tasks),
             "hypervolume_skips": []}
    if not done:
        return empty
    points = np.array([[s["normalized"][t]["value"] for t in tasks] for _, s in done])
    mask = non_dominated(points)
    kept = sorted((d for d, keep in zip(done, mask, strict=True) if keep), key=lambda d: -d[1]["objective"]["value"])
    hv, skipped = front_hypervolume(points[mask], tasks)
    return {**empty, "trials": [n for n, _ in kept], "hypervolume": hv, "hypervolume_skips": skipped}


class Claims(WorkClaims):
    """Validation work shared by workers (``valclaim:N`` claims, ``val:N`` results): see
    optimizer/claims.py."""

    def __init__(self, study, owner: str, *, heartbeat_s: float, grace_s: float) -> None:
        super().__init__(study, owner, heartbeat_s=heartbeat_s, grace_s=grace_s, claim_prefix=VAL_CLAIM, done_prefix=VAL)
