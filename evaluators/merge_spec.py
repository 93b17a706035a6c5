"""MergeSpec: one candidate merge as data (method, per-checkpoint weights, method parameters).

It is the evaluators' boundary type: the optimizer's candidates, mergekit YAML files and the
REST API all become a MergeSpec before any tensor is touched."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evaluators import merge_methods as mm
from evaluators.granularity import Granularity, check_group_weights

MethodName = Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
# The base model as a member of a linear merge, under its own weight (pool.base_in_search; the
# optimizer's candidate.BASE_WEIGHT). Exports list it under mergekit's `models:` with that weight.
BASE_WEIGHT = "__base__"


class MergeSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    method: MethodName = "linear"
    weights: dict[str, float] = Field(description="checkpoint name -> weight")
    density: float | dict[str, float] | None = Field(
        default=None, description="fraction of each task vector kept (ties / dare_*)"
    )
    lambda_: float = Field(default=1.0, alias="lambda")
    normalize: bool | None = Field(default=None, description="None: mergekit's method default")
    seed: int = Field(default=0, description="seed of the DARE drop masks")
    granularity: Granularity | None = Field(default=None, description="None: one weight per checkpoint")
    group_weights: dict[str, list[float]] | None = Field(
        default=None, description="checkpoint -> weight per group (evaluators/granularity.py); overrides weights")

    @field_validator("weights")
    @classmethod
    def _finite_weights(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("weights must name at least one checkpoint")
        bad = [k for k, w in v.items() if not math.isfinite(w)]
        if bad:
            raise ValueError(f"weight of '{bad[0]}' is not a finite number")
        return v

    @model_validator(mode="after")
    def _check_params(self) -> MergeSpec:
        if not math.isfinite(self.lambda_):
            raise ValueError("lambda is not a finite number")
        densities = (
            list(self.density.values()) if isinstance(self.density, dict) else [self.density]
        )
        for d in densities:
            if d is not None and not (math.isfinite(d) and 0 < d <= 1):
                raise ValueError(f"density must be in (0, 1], got {d}")
        if self.method in mm.USES_DENSITY and self.density is None:
            self.density = 1.0
        if self.has_base_weight and self.method != "linear":
            raise ValueError(f"a weight for the base ('{BASE_WEIGHT}') is for linear merges only; "
                             f"{self.method} builds on the base already")
        linear_normalized = self.method == "linear" and self.resolved_normalize
        check_group_weights(self.granularity, self.group_weights, nonzero_sums=linear_normalized)
        if linear_normalized and self.granularity is None and abs(sum(self.weights.values())) < 1e-12:
            raise ValueError("linear merge with normalize: the weights sum to zero")
        return self

    @property
    def resolved_normalize(self) -> bool:
        return mm.DEFAULT_NORMALIZE[self.method] if self.normalize is None else self.normalize

    @property
    def needs_base(self) -> bool:
        return self.method in mm.NEEDS_BASE

    @property
    def has_base_weight(self) -> bool:
        """The base is a member of this (linear) merge."""
        return BASE_WEIGHT in self.weights or BASE_WEIGHT in (self.group_weights or {})

    def weight_vector(self, names: list[str]) -> list[float]:
        unknown = sorted(set(self.weights) - set(names))
        if unknown:
            raise ValueError(f"weight given for unknown checkpoint '{unknown[0]}' (pool: {names})")
        return [float(self.weights.get(n, 0.0)) for n in names]

    def density_vector(self, names: list[str]) -> list[float]:
        if isinstance(self.density, dict):
            return [float(self.density.get(n, 1.0)) for n in names]
        return [float(self.density if self.density is not None else 1.0)] * len(names)

    def generator_for(self, tensor_name: str, device: torch.device) -> torch.Generator | None:
        """A per-tensor generator: DARE masks depend only on (seed, tensor), not on order."""
        if self.method not in mm.RANDOMIZED:
            return None
        g = torch.Generator(device=device)
        g.manual_seed((self.seed * 1_000_003 + zlib.crc32(tensor_name.encode())) % (2**63))
        return g


def merge_tensor(
    spec: MergeSpec,
    names: list[str],
    tensor_name: str,
    *,
    tensors: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
    deltas: torch.Tensor | None = None,
    ranks: torch.Tensor | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Merge one parameter. Linear needs ``tensors``; the task-vector methods need ``base`` and
    ``deltas`` (precomputed once per study by the resident pool). ``weights``: this tensor's own
    (a granular spec's group weights, evaluators/granularity.py); None: the spec's."""
    weights = spec.weight_vector(names) if weights is None else list(weights)
    if spec.method == "linear":
        assert tensors is not None
        return mm.linear(tensors, weights, normalize=spec.resolved_normalize)
    assert base is not None and deltas is not None
    kwargs = method_kwargs(spec, names, tensor_name, deltas.device)
    if spec.method == "ties" and ranks is not None:
        kwargs["ranks"] = ranks
    return mm.METHODS[spec.method](base, deltas, weights, **kwargs)


def method_kwargs(spec: MergeSpec, names: list[str], tensor_name: str, device: torch.device) -> dict:
    """A task-vector method's parameters for one tensor (the per-tensor and chunked paths share them)."""
    kwargs: dict = {"lambda_": spec.lambda_, "normalize": spec.resolved_normalize}
    if spec.method in mm.USES_DENSITY:
        kwargs["density"] = spec.density_vector(names)
    if spec.method in mm.RANDOMIZED:
        kwargs["generator"] = spec.generator_for(tensor_name, device)
    return kwargs
