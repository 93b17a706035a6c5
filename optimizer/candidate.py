"""Candidate: what the optimizer asks an Evaluator to score, and the Evaluator protocol.

The optimizer never imports torch or evaluators/: an Evaluator is anything with this shape."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from optimizer.granularity import Granularity

# The weight key of the base model as a member of a linear merge (pool.base_in_search). No
# checkpoint name can take it (names start with a letter or digit); evaluators/merge_spec.py
# spells the same key.
BASE_WEIGHT = "__base__"


class Candidate(BaseModel):
    """One merge, as data. Field names match mergekit's parameters."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    method: Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
    weights: dict[str, float]
    density: float | None = None
    lambda_: float = Field(default=1.0, alias="lambda")
    normalize: bool | None = None
    seed: int = 0
    # search.granularity other than model: the weights per group (Granularity.labels() order);
    # ``weights`` then holds each checkpoint's mean over its groups, as a summary.
    granularity: Granularity | None = None
    group_weights: dict[str, list[float]] | None = None

    def to_json(self) -> dict:
        return self.model_dump(by_alias=True)


@runtime_checkable
class Evaluator(Protocol):
    """Weights in, raw per-task scores out. ``directions[task]`` is True when higher is better
    (it may be filled by the first evaluation). Everything the study runner uses is declared
    here; it probes for nothing (evaluators/engine.py's MergeEvaluator implements it)."""

    last_timings: dict[str, float]
    """Seconds by stage (e.g. materialize_s, score_s) of the last ``evaluate`` or ``validate``;
    stored with the trial. Empty when there is nothing to time."""

    @property
    def checkpoint_names(self) -> list[str]: ...

    @property
    def has_base(self) -> bool: ...

    @property
    def directions(self) -> dict[str, bool]: ...

    def evaluate(self, candidate: Candidate, fidelity: float = 1.0) -> dict[str, float]:
        """``fidelity``: the fraction of each task's documents to score (multi-fidelity search)."""
        ...

    def validate(self, candidate: Candidate) -> dict[str, dict]:
        """Per task, the score on the validation documents (never seen by the search) and its
        per-document values: ``{"score", "values", "aggregation"}`` (optimizer/validation.py)."""
        ...

    def doc_counts(self, split: str = "search") -> dict[str, int]:
        """Documents per task in ``split`` ("search" or "validation"); empty when the scores are
        not means over documents (then no noise guidance is given)."""
        ...


def one_hot(names: list[str], name: str) -> Candidate:
    """Exactly checkpoint ``name`` (a normalized linear merge with one non-zero weight)."""
    return Candidate(method="linear", weights={n: float(n == name) for n in names}, normalize=True)


def base_only(names: list[str]) -> Candidate:
    """Exactly the base model: task arithmetic with every task vector weighted 0."""
    return Candidate(method="task_arithmetic", weights=dict.fromkeys(names, 0.0))
