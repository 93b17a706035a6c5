"""Scores reused for a merge the study has already scored.

With gated weights (search.weights) many CMA-ES proposals near a single checkpoint or a
sub-soup are the same merge once their negative weights are clipped: evaluating them again
would cost a full evaluation and tell the search nothing new. A proposal whose merge equals a
completed full-fidelity trial's gets that trial's raw scores (the same documents, the same
model: the same numbers, up to nondeterminism that an evaluation of it would add)."""

from __future__ import annotations

import json

from contract.merge import MergeSpec
from optimizer.attrs import T_CANDIDATE, T_FIDELITY, T_RAW, T_SDOCS


def candidate_key(cand: MergeSpec) -> str:
    """Equal for candidates that merge to the same model (normalized linear weights compared
    as shares of their sum)."""
    data = cand.to_json()
    if cand.normalize is None:
        data["normalize"] = cand.resolved_normalize
    weights = dict(cand.weights)
    total = sum(weights.values())
    if cand.method == "linear" and data["normalize"] and total > 0 and cand.group_weights is None:
        weights = {n: w / total for n, w in weights.items()}
    data["weights"] = {n: round(w, 12) for n, w in sorted(weights.items())}
    if not cand.info.randomized:  # the seed changes only a randomized merge
        data["seed"] = 0
    return json.dumps(data, sort_keys=True, default=str)


class ScoredMerges:
    """Completed full-fidelity trials by the merge they scored (keys cached per trial number)."""

    def __init__(self) -> None:
        self.keys: dict[int, str | None] = {}

    def find(self, rows, cand: MergeSpec) -> tuple[int, dict, dict | None] | None:
        """(trial number, raw scores, per-document values or None) of a completed trial of
        ``rows`` with the same merge."""
        key = candidate_key(cand)
        for t in rows:
            if t.number not in self.keys:
                ua = t.user_attrs
                usable = T_RAW in ua and T_CANDIDATE in ua and ua.get(T_FIDELITY, 1.0) == 1.0
                self.keys[t.number] = candidate_key(MergeSpec.model_validate(ua[T_CANDIDATE])) if usable else None
            if self.keys[t.number] == key:
                return t.number, dict(t.user_attrs[T_RAW]), t.user_attrs.get(T_SDOCS)
        return None
