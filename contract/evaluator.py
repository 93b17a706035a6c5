"""The Evaluator protocol: everything the study runner asks of an evaluator, and all it may ask.

The optimizer never imports torch or evaluators/: an Evaluator is anything with this shape
(evaluators/engine.py's MergeEvaluator; tests/fakes.py's pools). The runner probes for nothing
(no hasattr/getattr on an evaluator: tests/test_evaluator_contract.py)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from contract.merge import MergeSpec


@runtime_checkable
class Evaluator(Protocol):
    """Weights in, raw per-task scores out. ``directions[task]`` is True when higher is better
    (it may be filled by the first evaluation)."""

    last_timings: dict[str, float]
    """Seconds by stage (e.g. materialize_s, score_s) of the last ``evaluate`` or ``validate``;
    stored with the trial. Empty when there is nothing to time."""

    last_documents: dict[str, dict]
    """Per task, the per-document values behind the last full-fidelity ``evaluate``'s score, as
    ``{"score", "values", "aggregation"}`` (like ``validate``): what lets the study tell a search
    trial's lead on the search documents from their noise (optimizer/recommend.py). Empty when
    the scores are not means over documents, or after a partial-fidelity ``evaluate``."""

    @property
    def checkpoint_names(self) -> list[str]: ...

    @property
    def has_base(self) -> bool: ...

    @property
    def directions(self) -> dict[str, bool]: ...

    def evaluate(self, candidate: MergeSpec, fidelity: float = 1.0) -> dict[str, float]:
        """``fidelity``: the fraction of each task's documents to score (multi-fidelity search)."""
        ...

    def validate(self, candidate: MergeSpec) -> dict[str, dict]:
        """Per task, the score on the validation documents (never seen by the search) and its
        per-document values: ``{"score", "values", "aggregation"}`` (optimizer/validation.py)."""
        ...

    def doc_counts(self, split: str = "search") -> dict[str, int]:
        """Documents per task in ``split`` ("search" or "validation"); empty when the scores are
        not means over documents (then no noise guidance is given)."""
        ...
