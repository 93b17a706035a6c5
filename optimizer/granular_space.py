"""The search space of a granular study: one weight per checkpoint per group.

Each group is a model-level space of its own (the same bounds, the same repairs of degenerate
points: optimizer/space.py), so every rule a model-level space applies to its weights applies to
each group's; density and lambda stay one value per merge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from optuna.distributions import FloatDistribution

from contract.granularity import Granularity
from contract.merge import MergeSpec


class ModelSpace(Protocol):
    names: list[str]

    def distributions(self) -> dict[str, FloatDistribution]: ...
    def candidate(self, params: dict[str, float], seed: int = 0) -> MergeSpec: ...
    def embed(self, cand: MergeSpec) -> dict[str, float]: ...


def group_param(name: str, label: str) -> str:
    return f"w:{name}:{label}"


class GroupedSpace:
    def __init__(self, flat: ModelSpace, granularity: Granularity, weight_param: Callable[[str], str]) -> None:
        self.flat = flat
        self.granularity = granularity
        self.labels = granularity.labels()
        self.weight_param = weight_param

    def _shared(self, params: dict[str, float]) -> dict[str, float]:
        own = {self.weight_param(n) for n in self.flat.names}
        return {k: v for k, v in params.items() if k not in own}

    def distributions(self) -> dict[str, FloatDistribution]:
        flat = self.flat.distributions()
        out = {group_param(n, label): flat[self.weight_param(n)] for n in self.flat.names for label in self.labels}
        return out | self._shared(flat)

    def candidate(self, params: dict[str, float], seed: int = 0) -> MergeSpec:
        shared = {k: v for k, v in params.items() if not k.startswith("w:")}
        groups = [
            self.flat.candidate(shared | {self.weight_param(n): params[group_param(n, label)] for n in self.flat.names},
                                seed)
            for label in self.labels
        ]
        group_weights = {n: [c.weights[n] for c in groups] for n in groups[0].weights}
        return MergeSpec.model_validate(groups[0].model_dump() | {
            "weights": {n: sum(ws) / len(ws) for n, ws in group_weights.items()},
            "granularity": self.granularity, "group_weights": group_weights,
        })

    def embed(self, cand: MergeSpec) -> dict[str, float]:
        """Per group, the model-level embedding of that group's weights; a candidate of another
        granularity (a model-level baseline) has the same weights in every group."""
        same = cand.group_weights is not None and cand.granularity == self.granularity
        plain = cand.model_copy(update={"granularity": None, "group_weights": None})
        if same:
            cands = [plain.model_copy(update={"weights": {n: ws[i] for n, ws in cand.group_weights.items()}})
                     for i in range(len(self.labels))]
        else:
            cands = [plain] * len(self.labels)
        points = [self.flat.embed(c) for c in cands]
        out = self._shared(points[0])
        for label, point in zip(self.labels, points, strict=True):
            out.update({group_param(n, label): point[self.weight_param(n)] for n in self.flat.names})
        return out
