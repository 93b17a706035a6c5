"""The merge methods, in mergekit's style: one MethodInfo per method, keyed by its name.

Every fact about a method that more than one module needs (whether it takes task vectors against
a base, keeps a density of them, draws random masks, normalizes by default, what a search varies
besides the weights) is read from this table; the tensor formulas are in
evaluators/merging/methods.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Spelled out for pydantic and type checkers; tests/test_contract.py checks it names the table's keys.
MethodName = Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    needs_base: bool  # merges task vectors t_i - base, so the pool needs a base model
    uses_density: bool  # keeps a fraction (density) of each task vector
    randomized: bool  # the seed changes the merge (DARE's drop masks)
    default_normalize: bool  # mergekit's default of `normalize` (registry.py) when a config omits it
    searched: tuple[str, ...]  # the parameters a search varies besides the weights
    description: str


METHOD_INFO: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("linear", needs_base=False, uses_density=False, randomized=False, default_normalize=True,
               searched=(), description="weighted average of the checkpoints"),
    MethodInfo("task_arithmetic", needs_base=True, uses_density=False, randomized=False,
               default_normalize=False, searched=("lambda",),
               description="base + lambda * weighted sum of the task vectors"),
    MethodInfo("ties", needs_base=True, uses_density=True, randomized=False, default_normalize=True,
               searched=("density",),
               description="task vectors trimmed to their largest entries, signs elected, disjoint mean"),
    MethodInfo("dare_ties", needs_base=True, uses_density=True, randomized=True, default_normalize=False,
               searched=("density",),
               description="task vectors randomly dropped and rescaled, then TIES' sign election"),
    MethodInfo("dare_linear", needs_base=True, uses_density=True, randomized=True, default_normalize=False,
               searched=("density",),
               description="task vectors randomly dropped and rescaled, then summed"),
)}
