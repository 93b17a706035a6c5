"""Per-group merge weights: which weight vector each pool tensor gets (README "Granularity").

The groups are contract/granularity.py's; this module maps them to tensor names. A tensor has a
depth and a kind:
- depth: its layer (``...layers.N...``); tensors outside the layers go with the nearest layer,
  as mergekit's slices do (embeddings with the first layer, every other one -- final norm, head --
  with the last), so an exported ``slices:`` config gives them the same weights.
- kind: the first of the listed kinds one of whose substrings is in its name, in MATCH_ORDER (the
  order of the exported mergekit ``filter`` entries, which mergekit also takes first-match), else
  ``rest``.

``layer_groups: K`` puts layer l in group l * K // L (K consecutive groups, sizes differing by at
most one); ``smooth: C`` gives layer l the linear interpolation of the C control points at
t = l / (L - 1), with mergekit's gradient arithmetic."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from contract.granularity import KINDS, REST, Granularity

# Norms first: q_norm / k_norm inside self_attn are norms. mergekit matches a filter as a substring.
MATCH_ORDER = ("norms", "embeddings", "attention", "mlp")
KIND_FILTERS: dict[str, tuple[str, ...]] = {
    "norms": ("norm",),
    "embeddings": ("embed", "lm_head"),
    "attention": ("self_attn",),
    "mlp": ("mlp",),
}
LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


class GranularityError(ValueError):
    """A granularity this pool cannot take (more layer groups than layers, an unclassifiable tensor)."""


def kind_of(name: str, kinds: list[str] | None) -> str:
    for kind in MATCH_ORDER:
        if kinds is not None and kind in kinds and any(s in name for s in KIND_FILTERS[kind]):
            return kind
    return REST


def layer_of(name: str) -> int | None:
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


def is_pre_layer(name: str) -> bool:
    """Tensors before the first layer (mergekit's pre_weights): the input embeddings."""
    return any(s in name for s in ("embed", "wte", "wpe"))


def interpolate(points: list[float], t: float) -> float:
    """mergekit's gradient value at ``t`` (config.evaluate_setting), operation for operation."""
    scaled = t * (len(points) - 1)
    i0 = int(scaled)
    i1 = min(len(points) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * points[i0] + frac * points[i1]


def layer_t(layer: int, num_layers: int) -> float:
    return layer / (num_layers - 1) if num_layers > 1 else 1.0  # mergekit plan_slice


@dataclass(frozen=True)
class TensorGroups:
    """Each tensor's (layer, kind slot) for one granularity over one pool's tensor names."""

    granularity: Granularity
    num_layers: int
    slots: dict[str, tuple[int, int]]

    @classmethod
    def build(cls, granularity: Granularity, tensor_names: list[str]) -> TensorGroups:
        layers = {n: layer_of(n) for n in tensor_names}
        found = [x for x in layers.values() if x is not None]
        if not found and granularity.depth > 1:
            raise GranularityError("this pool's tensors have no layer index ('...layers.N...'): "
                                   "layer_groups / smooth cannot split it by depth")
        num_layers = max(found, default=0) + 1
        if granularity.layer_groups and granularity.layer_groups > num_layers:
            raise GranularityError(f"granularity.layer_groups is {granularity.layer_groups} but the pool has "
                                   f"{num_layers} layers")
        slots_of = granularity.kind_slots
        slots = {}
        for name in tensor_names:
            kind = kind_of(name, granularity.kinds) if granularity.kinds else ""
            if kind not in slots_of:
                raise GranularityError(f"tensor '{name}' is none of the kinds {KINDS}; list fewer kinds so that "
                                       f"it takes the '{REST}' weight")
            layer = layers[name]
            if layer is None:
                layer = 0 if is_pre_layer(name) else num_layers - 1
            slots[name] = (layer, slots_of.index(kind))
        return cls(granularity, num_layers, slots)

    def depth_key(self, layer: int) -> int:
        """Layers sharing a key share their weights: the layer group, or the layer (smooth)."""
        g = self.granularity
        if g.layer_groups:
            return layer * g.layer_groups // self.num_layers
        return layer if g.smooth else 0

    def key(self, name: str) -> tuple[int, int]:
        layer, slot = self.slots[name]
        return self.depth_key(layer), slot

    def weights_at(self, group_weights: dict[str, list[float]], names: list[str], key: tuple[int, int]) -> list[float]:
        """The weight of each of ``names`` for the tensors of ``key``."""
        d, slot = key
        m = len(self.granularity.kind_slots)
        if self.granularity.smooth:
            t = layer_t(d, self.num_layers)
            return [interpolate(group_weights[n][slot::m], t) if n in group_weights else 0.0 for n in names]
        return [group_weights[n][d * m + slot] if n in group_weights else 0.0 for n in names]

    def runs(self, offsets: dict[str, tuple[int, int]]) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
        """Maximal stretches of the flat layout whose tensors share one key: ([(start, end, row)],
        the key of each row). The fused merges walk these, one weight vector per row."""
        keys: list[tuple[int, int]] = []
        runs: list[tuple[int, int, int]] = []
        for name in sorted(offsets, key=lambda n: offsets[n][0]):
            s, e = offsets[name]
            k = self.key(name)
            if k not in keys:
                keys.append(k)
            row = keys.index(k)
            if runs and runs[-1][2] == row and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], e, row)
            elif e > s:
                runs.append((s, e, row))
        return runs, keys


def layout_key(name: str) -> tuple[int, float, str]:
    """Order of the resident flat buffer: by kind (every kind listed), then depth, so each group of
    any granularity is a few long stretches of it rather than one per tensor."""
    kind = kind_of(name, list(KINDS))
    layer = layer_of(name)
    depth = layer if layer is not None else (-1 if is_pre_layer(name) else math.inf)
    return [*MATCH_ORDER, REST].index(kind), depth, name
