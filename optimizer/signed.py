"""Signed weights for normalized linear merges (search.signed_weights).

mergekit's linear merge with ``normalize`` divides by the plain sum of the weights
(``merge_methods/linear.py``: ``result / weight.sum()``), negative weights included, with no guard:
the merge is sum_i (w_i / S) t_i, S = sum_i w_i. Its coefficients w_i / S do not change when
every weight is scaled, by a negative factor too, but they blow up as S approaches 0 (weights
that cancel). How far a candidate extrapolates is its amplification

    A = sum_i |w_i| / |sum_i w_i|      (1 for weights of one sign; the coefficients' L1 norm)

Rule (repair, not refusal: a refused candidate would cost a failed trial and tell CMA-ES nothing):
a candidate with A above ``max_amplification`` K has the weights of its minority sign (the side
with the smaller total |w|) shrunk by one common factor until A = K exactly:

    M = majority total, m = minority total, (M + a m) / (M - a m) = K  =>  a = M (K - 1) / (m (K + 1))

so |S| = 2 M / (K + 1) > 0 and the merge is what mergekit computes for the repaired weights
(they are the candidate's weights: scored, stored and exported). Weights summing to exactly 0
on both sides (all zero) are the caller's case (the uniform fallback)."""

from __future__ import annotations


def amplification(weights: dict[str, float]) -> float:
    total = sum(weights.values())
    size = sum(abs(w) for w in weights.values())
    return float("inf") if total == 0 else size / abs(total)


def repair(weights: dict[str, float], max_amplification: float) -> dict[str, float]:
    """``weights`` with amplification at most ``max_amplification`` (unchanged when it is)."""
    pos = sum(w for w in weights.values() if w > 0)
    neg = -sum(w for w in weights.values() if w < 0)
    if pos == 0 and neg == 0:
        return dict(weights)
    if amplification(weights) <= max_amplification:
        return dict(weights)
    k = max_amplification
    major, minor = max(pos, neg), min(pos, neg)
    shrink = major * (k - 1) / (minor * (k + 1))
    minority_positive = pos < neg  # a tie (S = 0) shrinks the negative side
    return {n: w * shrink if (w > 0) == minority_positive and w != 0 else w for n, w in weights.items()}
