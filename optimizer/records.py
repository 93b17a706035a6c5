"""Reading a study back: trial rows and the stored front (what `mergeopt front` and the API show).

Everything a study knows lives in Optuna's storage: study user attrs hold the spec, the
reference scores and the latest front snapshot; trial user attrs hold the candidate, raw and
normalized scores, timings and errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import optuna
from optuna.trial import TrialState

from optimizer.attrs import (  # the keys, re-exported for the readers that take them from here
    A_DIRECTIONS,
    A_FRONT,
    A_IDENTITY,
    A_REFS,
    A_SPEC,
    A_VFRONT,
    BASE_LABEL,
    KIND_SEARCH,
    T_CANDIDATE,
    T_ERROR,
    T_FIDELITY,
    T_KIND,
    T_LABEL,
    T_NORM,
    T_OBJ,
    T_RAW,
    T_SDOCS,
    T_TIMES,
    VAL_ERROR,
    VAL_SUMMARY,
    search_label,
)
from optimizer.front import front_hypervolume, non_dominated
from optimizer.validation import stored as stored_validation

__all__ = ["A_DIRECTIONS", "A_FRONT", "A_IDENTITY", "A_REFS", "A_SPEC", "BASE_LABEL", "T_CANDIDATE", "T_ERROR",
           "T_FIDELITY", "T_KIND", "T_LABEL", "T_NORM", "T_OBJ", "T_RAW", "T_TIMES", "TrialRow", "compute_front",
           "stale_reason", "stored_front", "trial_attrs", "trial_rows", "trials"]


def trials(study: optuna.Study, states: tuple[TrialState, ...] = (TrialState.COMPLETE,)) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)


def trial_attrs(candidate: dict, kind: str, label: str, raw: dict, norm: dict, obj: float, timings: dict,
                docs: dict | None = None) -> dict:
    """A scored trial's user attributes (``candidate``: MergeSpec.to_json(); ``docs``: the
    per-document values behind ``raw``, when the evaluator gave them)."""
    out = {T_CANDIDATE: candidate, T_KIND: kind, T_LABEL: label, T_RAW: raw, T_NORM: norm, T_OBJ: obj,
           T_TIMES: timings}
    if docs:
        out[T_SDOCS] = docs
    return out


@dataclass
class TrialRow:
    number: int
    state: str
    kind: str  # attrs.KIND_BASELINE | attrs.KIND_SEARCH
    label: str  # attrs' labels: "checkpoint:NAME", "uniform", "ties", ... or "trial N"
    candidate: dict
    raw: dict[str, float] = field(default_factory=dict)
    normalized: dict[str, float] = field(default_factory=dict)
    objective: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # Scores on the validation documents, with intervals: {"n", "raw", "normalized", "objective"}
    # (each score {"value", "se", "lo", "hi"}); None until validated; {"error": ...} if that failed.
    validation: dict | None = None
    # Per-document values on the search documents (task -> stats.DocScores JSON), for the
    # recommendation (recommend.py); None when not stored. Not part of the row's JSON.
    search_docs: dict | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        out = asdict(replace(self, search_docs=None))  # not copied only to be dropped
        del out["search_docs"]
        return out


def stale_reason(trial: optuna.trial.FrozenTrial) -> str:
    """Why a trial failed with no error of its own: every failure mergeopt's loop sees stores
    one (T_ERROR), so a failed trial without one was failed by heartbeat (fail_stale_trials, or
    no heartbeat ever): its worker died. Its budget slot goes back to the study."""
    took = ""
    if trial.datetime_start and trial.datetime_complete:
        took = f" after {(trial.datetime_complete - trial.datetime_start).total_seconds():.0f} s"
    return f"worker stopped sending heartbeats (died or was killed); failed{took} and retried"


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    rows = []
    mergeopt = A_SPEC in study.user_attrs  # another Optuna client's failures mean something else
    validated = {n: e.get(VAL_SUMMARY) or ({VAL_ERROR: e[VAL_ERROR]} if VAL_ERROR in e else None)
                 for n, e in stored_validation(study.user_attrs).items()}
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        rows.append(
            TrialRow(
                number=t.number,
                state=t.state.name,
                kind=ua.get(T_KIND, KIND_SEARCH),
                label=ua.get(T_LABEL, search_label(t.number)),
                candidate=ua.get(T_CANDIDATE, {}),
                raw=ua.get(T_RAW, {}),
                normalized=ua.get(T_NORM, {}),
                objective=ua.get(T_OBJ),
                timings=ua.get(T_TIMES, {}),
                error=ua.get(T_ERROR) or (stale_reason(t) if mergeopt and t.state == TrialState.FAIL else None),
                validation=validated.get(t.number),
                search_docs=ua.get(T_SDOCS),
            )
        )
    return rows


def compute_front(rows: list[TrialRow], tasks: list[str]) -> dict:
    """Non-dominated completed trials (baselines included) over normalized per-task scores."""
    done = [r for r in rows if r.state == TrialState.COMPLETE.name and r.normalized]
    if not done:
        return {"tasks": tasks, "trials": [], "hypervolume": 0.0, "reference_point": [0.0] * len(tasks),
                "hypervolume_skips": []}
    points = np.array([[r.normalized[t] for t in tasks] for r in done])
    mask = non_dominated(points)
    front = sorted((r for r, keep in zip(done, mask, strict=True) if keep),
                   key=lambda r: -(r.objective or 0.0))
    hv, skipped = front_hypervolume(points[mask], tasks)
    return {
        "tasks": tasks,
        "trials": [r.number for r in front],
        "hypervolume": hv,
        "reference_point": [0.0] * len(tasks),
        "hypervolume_skips": skipped,  # tasks no trial scores above 0 on (see optimizer/front.py)
    }


def stored_front(study: optuna.Study, split: str = "validation") -> dict:
    """The front a user reads: over validation documents unless the study has none (validation
    off) or ``split`` asks for the search documents' front."""
    attrs = study.user_attrs
    if split == "validation" and A_VFRONT in attrs:
        return attrs[A_VFRONT]
    front = attrs.get(A_FRONT) or compute_front(trial_rows(study), [t["task"] for t in attrs.get(A_SPEC, {}).get("suite", {}).get("tasks", [])])
    return {**front, "split": "search"}
