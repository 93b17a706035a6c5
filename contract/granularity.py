"""search.granularity: how many weights each checkpoint gets (README "Granularity").

``model`` (the default) is one weight per checkpoint. A Granularity splits it by depth
(``layer_groups``: K groups of consecutive layers, or ``smooth``: C control points linearly
interpolated over the layers) and/or by tensor kind (``kinds``: attention / mlp / norms /
embeddings, every other tensor sharing one ``rest`` weight). The number of groups depends on the
spec alone, never on the pool, so the search space is known before any model is loaded; the
evaluators map groups to tensors (evaluators/merging/granularity.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KindName = Literal["attention", "mlp", "norms", "embeddings"]
KINDS: tuple[str, ...] = ("attention", "mlp", "norms", "embeddings")
REST = "rest"
MAX_DEPTH_GROUPS = 256  # per-layer weights on the deepest models in use
MAX_CONTROL_POINTS = 32


class Granularity(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    layer_groups: int | None = Field(default=None, ge=1, le=MAX_DEPTH_GROUPS,
                                     description="K groups of consecutive layers, one weight each")
    smooth: int | None = Field(default=None, ge=2, le=MAX_CONTROL_POINTS,
                               description="C control points over depth, linearly interpolated per layer")
    kinds: list[KindName] | None = Field(default=None, min_length=1, max_length=len(KINDS),
                                         description="tensor kinds with their own weight; the others share 'rest'")

    @field_validator("kinds")
    @classmethod
    def _canonical(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"a kind is listed twice in {v}")
        return None if v is None else [k for k in KINDS if k in v]  # one order for labels and exports

    @model_validator(mode="after")
    def _one_depth_rule(self) -> Granularity:
        if self.layer_groups is not None and self.smooth is not None:
            raise ValueError("give layer_groups or smooth, not both")
        if self.layer_groups is None and self.smooth is None and self.kinds is None:
            raise ValueError("give layer_groups, smooth and/or kinds (or granularity: model)")
        return self

    @property
    def depth(self) -> int:
        return self.layer_groups or self.smooth or 1

    @property
    def kind_slots(self) -> list[str]:
        if self.kinds is None:
            return [""]
        return self.kinds if len(self.kinds) == len(KINDS) else [*self.kinds, REST]

    @property
    def n_groups(self) -> int:
        return self.depth * len(self.kind_slots)

    def labels(self) -> list[str]:
        """One label per group, depth-major: ``g1.mlp`` (layer group 1), ``p0`` (control point 0)."""
        prefix = "g" if self.layer_groups else "p" if self.smooth else ""
        depth = [f"{prefix}{d}" for d in range(self.depth)] if prefix else [""]
        return [".".join(p for p in (d, k) if p) for d in depth for k in self.kind_slots]

    def describe(self) -> str:
        parts = []
        if self.layer_groups:
            parts.append(f"{self.layer_groups} layer groups")
        if self.smooth:
            parts.append(f"{self.smooth} control points over depth")
        if self.kinds:
            parts.append("kinds " + "/".join(self.kind_slots))
        return " x ".join(parts)


def parse_granularity(value: object) -> Granularity | None:
    """``"model"`` / None -> None; a mapping -> Granularity (pydantic errors say which key)."""
    if value is None or value == "model":
        return None
    if isinstance(value, Granularity):
        return value
    if not isinstance(value, dict):
        raise ValueError("granularity is 'model' or a mapping such as {layer_groups: 4}, {smooth: 3} or "
                         f"{{kinds: [attention, mlp]}}, got {value!r}")
    return Granularity.model_validate(value)
