"""MergeSpec: one merge as data (method, per-checkpoint weights, method parameters).

What the optimizer proposes and the evaluators score: the search's candidates, mergekit YAML
files and stored trials (``user_attrs["candidate"]``, its ``to_json``) are all a MergeSpec, and
one that constructs is one the evaluators can merge. Field names match mergekit's parameters."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contract.granularity import Granularity
from contract.methods import METHOD_INFO, MethodInfo, MethodName

# The weight key of the base model as a member of a linear merge (pool.base_in_search). No
# checkpoint name can take it (names start with a letter or digit); exports list the base under
# mergekit's `models:` with this weight.
BASE_WEIGHT = "__base__"
# A normalized linear merge divides by the sum of its weights: below this it is refused (weights
# that cancel); optimizer/space.py repairs its points so that none is refused.
MIN_WEIGHT_SUM = 1e-12


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
    # search.granularity other than model: the weights per group (Granularity.labels() order);
    # ``weights`` then holds each checkpoint's mean over its groups, as a summary.
    granularity: Granularity | None = Field(default=None, description="None: one weight per checkpoint")
    group_weights: dict[str, list[float]] | None = Field(
        default=None, description="checkpoint -> weight per group (evaluators/merging/granularity.py); overrides weights")

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
        if self.info.uses_density and self.density is None:
            self.density = 1.0
        if self.has_base_weight and self.method != "linear":
            raise ValueError(f"a weight for the base ('{BASE_WEIGHT}') is for linear merges only; "
                             f"{self.method} builds on the base already")
        linear_normalized = self.method == "linear" and self.resolved_normalize
        check_group_weights(self.granularity, self.group_weights, nonzero_sums=linear_normalized)
        if linear_normalized and self.granularity is None and abs(sum(self.weights.values())) < MIN_WEIGHT_SUM:
            raise ValueError("linear merge with normalize: the weights sum to zero")
        return self

    def to_json(self) -> dict:
        """The stored form (``lambda`` under its mergekit name); model_validate reads it back."""
        return self.model_dump(by_alias=True)

    @property
    def info(self) -> MethodInfo:
        return METHOD_INFO[self.method]

    @property
    def resolved_normalize(self) -> bool:
        return self.info.default_normalize if self.normalize is None else self.normalize

    @property
    def needs_base(self) -> bool:
        return self.info.needs_base

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


def check_group_weights(granularity: Granularity | None, group_weights: dict[str, list[float]] | None,
                        *, nonzero_sums: bool) -> None:
    """Shapes and values; ``nonzero_sums`` (a normalized linear merge): no group's weights sum to 0."""
    if (granularity is None) != (group_weights is None):
        raise ValueError("granularity and group_weights come together")
    if granularity is None or group_weights is None:
        return
    n = granularity.n_groups
    for name, ws in group_weights.items():
        if len(ws) != n:
            raise ValueError(f"group_weights of '{name}' has {len(ws)} values; the granularity has {n} groups")
        if not all(math.isfinite(w) for w in ws):
            raise ValueError(f"a group weight of '{name}' is not a finite number")
    for i in range(n) if nonzero_sums else ():
        if abs(sum(ws[i] for ws in group_weights.values())) < MIN_WEIGHT_SUM:
            raise ValueError(f"linear merge with normalize: the weights of group {i} sum to zero")


def one_hot(names: list[str], name: str) -> MergeSpec:
    """Exactly checkpoint ``name`` (a normalized linear merge with one non-zero weight)."""
    return MergeSpec(method="linear", weights={n: float(n == name) for n in names}, normalize=True)


def base_only(names: list[str]) -> MergeSpec:
    """Exactly the base model: task arithmetic with every task vector weighted 0."""
    return MergeSpec(method="task_arithmetic", weights=dict.fromkeys(names, 0.0))
