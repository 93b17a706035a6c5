"""Per-study summaries the dashboard and clients read beside the front: the hypervolume after
each trial (from the trials themselves, so a study run by `mergeopt run`, which sends no
front_changed events, has a history too) and the recommended merge's validation headline."""

from __future__ import annotations

import numpy as np

from optimizer.attrs import V_RECOMMENDATION, V_RECOMMENDED
from optimizer.front import front_hypervolume, non_dominated
from optimizer.records import TrialRow


def hypervolume_history(rows: list[TrialRow], tasks: list[str]) -> list[tuple[int, float]]:
    """(trial, hypervolume of the search documents' front of the trials up to it), at each trial
    that changed it; the last value is the stored search front's hypervolume."""
    done = sorted((r for r in rows if r.state == "COMPLETE" and r.normalized and all(t in r.normalized for t in tasks)),
                  key=lambda r: r.number)
    front = np.empty((0, len(tasks)))
    out: list[tuple[int, float]] = []
    for r in done:
        p = np.array([[r.normalized[t] for t in tasks]])
        if len(front) and np.any(np.all(front >= p, axis=1)):  # dominated or equal: nothing changes
            continue
        pts = np.vstack([front, p])
        front = pts[non_dominated(pts)]
        hv, _ = front_hypervolume(front, tasks)
        if not out or hv != out[-1][1]:
            out.append((r.number, hv))
    return out


def recommended_headline(rows: list[TrialRow], verdict: dict | None) -> dict | None:
    """The recommended trial with its validation objective and 95% interval (None until it is
    validated or on a study without validation documents)."""
    number = (verdict or {}).get(V_RECOMMENDED)
    row = next((r for r in rows if r.number == number), None) if number is not None else None
    objective = (row.validation or {}).get("objective") if row is not None else None
    if not objective:
        return None
    why = (verdict or {}).get(V_RECOMMENDATION) or {}
    return {"trial": row.number, "label": row.label, "validation": {k: objective[k] for k in ("value", "lo", "hi")},
            "search_objective": row.objective, "rule": why.get("rule")}
