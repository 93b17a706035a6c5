"""Baselines evaluated before the search, recorded as ordinary trials so they compete in the
front. Defaults follow the papers that introduced each method."""

from __future__ import annotations

from dataclasses import dataclass

from contract.merge import MergeSpec, one_hot
from optimizer.attrs import DARE_TIES, TASK_ARITHMETIC, TIES, UNIFORM, checkpoint_label

# vectors and scale by lambda, which they pick on validation data; 0.3-0.5 is the usual range
# for multi-task addition, we use 0.4.
TA_LAMBDA = 0.4
# TIES (Yadav et al. 2023): keep the top 20% of each task vector (k=20), lambda = 1, disjoint mean.
TIES_DENSITY = 0.2
# DARE (Yu et al. 2024): drop rate p = 0.9 (density 0.1) with 1/(1-p)-style rescale, followed
# by TIES' sign consensus and disjoint mean.
DARE_DENSITY = 0.1


@dataclass(frozen=True)
class Baseline:
    label: str
    candidate: MergeSpec


def single_checkpoints(names: list[str]) -> list[Baseline]:
    return [Baseline(checkpoint_label(n), one_hot(names, n)) for n in names]


def merge_baselines(names: list[str], has_base: bool) -> list[Baseline]:
    ones = dict.fromkeys(names, 1.0)
    out = [Baseline(UNIFORM, MergeSpec(method="linear", weights=ones, normalize=True))]
    if has_base:
        out += [
            Baseline(TASK_ARITHMETIC, MergeSpec(method="task_arithmetic", weights=ones, lambda_=TA_LAMBDA)),
            Baseline(TIES, MergeSpec(method="ties", weights=ones, density=TIES_DENSITY, normalize=True)),
            Baseline(
                DARE_TIES,
                MergeSpec(method="dare_ties", weights=ones, density=DARE_DENSITY, normalize=True),
            ),
        ]
    return out
