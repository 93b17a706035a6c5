"""The mergekit form of a granular merge (evaluators/merging/granularity.py), tensor for tensor the same.

- kinds: each model's ``weight`` is a list of ``{filter, value}`` entries, one per substring of
  each listed kind in MATCH_ORDER, then ``{value}`` for the rest: mergekit takes the first entry
  whose filter is in the tensor's name, exactly the rule that classified the tensor here.
- depth (layer_groups, smooth): one ``slices:`` entry per run of layers sharing their weights
  (a layer group; one layer under smooth, its interpolated weight written out). mergekit gives
  the tensors before the layers the first slice's parameters and those after them the last's,
  which is where granularity.py puts them.
Values are written as Python floats, which YAML round-trips exactly."""

from __future__ import annotations

from contract.granularity import REST
from contract.merge import BASE_WEIGHT, MergeSpec
from evaluators.merging.granularity import KIND_FILTERS, MATCH_ORDER, TensorGroups


def _weight(spec: MergeSpec, groups: TensorGroups, names: list[str], depth: int, i: int):
    slots = groups.granularity.kind_slots

    def value(slot: int) -> float:
        return float(groups.weights_at(spec.group_weights or {}, names, (depth, slot))[i])

    if groups.granularity.kinds is None:
        return value(0)
    entries = [{"filter": sub, "value": value(slots.index(kind))}
               for kind in MATCH_ORDER if kind in slots for sub in KIND_FILTERS[kind]]
    if REST in slots:
        entries.append({"value": value(slots.index(REST))})
    return entries


def _depth_runs(groups: TensorGroups) -> list[tuple[int, int, int]]:
    """(first layer, end layer, depth key) of each run of layers sharing their weights."""
    runs: list[tuple[int, int, int]] = []
    for layer in range(groups.num_layers):
        key = groups.depth_key(layer)
        if runs and runs[-1][2] == key:
            runs[-1] = (runs[-1][0], layer + 1, key)
        else:
            runs.append((layer, layer + 1, key))
    return runs


def granular_inputs(spec: MergeSpec, checkpoints: list[tuple[str, str]], base: str | None,
                    groups: TensorGroups, densities: dict[str, float]) -> dict:
    """``{"models": [...]}`` or ``{"slices": [...]}`` for the config; paths already absolute."""
    members = list(checkpoints)
    if spec.method == "linear" and base is not None and BASE_WEIGHT in (spec.group_weights or {}):
        members.append((BASE_WEIGHT, base))
    names = [n for n, _ in members]

    def params(depth: int, i: int) -> dict:
        out: dict = {"weight": _weight(spec, groups, names, depth, i)}
        if spec.info.uses_density:
            out["density"] = densities[names[i]]
        return out

    if groups.granularity.depth == 1:
        return {"models": [{"model": p, "parameters": params(0, i)} for i, (_, p) in enumerate(members)]}
    slices = []
    for first, end, key in _depth_runs(groups):
        sources = [{"model": p, "layer_range": [first, end], "parameters": params(key, i)}
                   for i, (_, p) in enumerate(members)]
        if spec.needs_base:  # mergekit adds the base by itself only to `models:`
            sources.append({"model": base, "layer_range": [first, end]})
        slices.append({"sources": sources})
    return {"slices": slices}

