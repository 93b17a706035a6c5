"""Search spaces: Optuna distributions per merge method, and the maps between a point in the
space and a MergeSpec (both ways, so baselines can be placed in the space to warm-start CMA-ES)."""

from __future__ import annotations

from optuna.distributions import FloatDistribution

from contract.merge import BASE_WEIGHT, MIN_WEIGHT_SUM, MergeSpec
from contract.methods import METHOD_INFO
from optimizer.granular_space import GroupedSpace
from optimizer.signed import repair
from optimizer.spec import SearchSpec

# search.weights 'gated': where a left-out member's weight is placed when a set-up trial is
# embedded, as a share of the range's top (the CMA-ES step decides how often it rejoins).
GATE_MARGIN = 0.2


def weight_param(name: str) -> str:
    return f"w:{name}"


class SearchSpace:
    def __init__(self, search: SearchSpec, names: list[str]) -> None:
        self.search = search
        self.names = names
        # search.granularity other than model: the same space per group (granular_space.py)
        g = search.granularity
        self.grouped = None if g == "model" else GroupedSpace(
            SearchSpace(search.model_copy(update={"granularity": "model"}), names), g, weight_param)

    def distributions(self) -> dict[str, FloatDistribution]:
        if self.grouped is not None:
            return self.grouped.distributions()
        lo, hi = self.search.weight_range
        if self.gated:
            lo = -hi  # the negative half: the member is left out (weight 0)
        dists = {weight_param(n): FloatDistribution(lo, hi) for n in self.names}
        if "density" in self.searched:
            dists["density"] = FloatDistribution(*self.search.density_range)
        if "lambda" in self.searched:
            dists["lambda"] = FloatDistribution(*self.search.lambda_range)
        return dists

    @property
    def searched(self) -> tuple[str, ...]:
        """The method's parameters searched beside the weights (contract/methods.py)."""
        return METHOD_INFO[self.search.method].searched

    @property
    def gated(self) -> bool:
        return self.search.weight_mode == "gated"

    def candidate(self, params: dict[str, float], seed: int = 0) -> MergeSpec:
        if self.grouped is not None:
            return self.grouped.candidate(params, seed)
        weights = {n: float(params[weight_param(n)]) for n in self.names}
        method = self.search.method
        if self.gated:
            weights = self._ungate(weights)
        normalize = self.search.normalize
        signed = self.search.signed_weights
        size = sum(abs(w) for w in weights.values()) if signed else sum(weights.values())
        if method == "linear" and normalize is not False and signed and size > 1e-9:
            weights = repair(weights, self.search.max_amplification)  # weights that cancel
            # Repaired, |sum| >= 2 size / (K + 1): with weights barely above 1e-9 and K near its
            # bound it can still fall below what a normalized merge accepts; then as below.
            size = size if abs(sum(weights.values())) >= MIN_WEIGHT_SUM else 0.0
        if method == "linear" and normalize is not False and size <= 1e-9:
            # All weights at the lower bound: the normalized merge is undefined; take the
            # uniform average, its limit along the diagonal.
            weights = dict.fromkeys(self.names, 1.0)
        return MergeSpec(
            method=method,
            weights=weights,
            density=params.get("density") if "density" in self.searched else None,
            lambda_=float(params.get("lambda", 1.0)),
            normalize=normalize,
            seed=seed,
        )

    def _ungate(self, raw: dict[str, float]) -> dict[str, float]:
        """Gated weights: max(u, 0). A normalized linear merge with every member gated off is the
        member nearest to joining (the largest u) alone, so the regions of the single checkpoints
        meet the rest of the space without a jump to the uniform average."""
        weights = {n: max(u, 0.0) for n, u in raw.items()}
        normalized = self.search.method == "linear" and self.search.normalize is not False
        if normalized and not any(w > 0 for w in weights.values()):
            top = max(raw, key=raw.get)
            weights = {n: float(n == top) for n in raw}
        return weights

    def embed(self, cand: MergeSpec) -> dict[str, float]:
        """The point of this space closest to ``cand`` (exact when methods agree)."""
        if self.grouped is not None:
            return self.grouped.embed(cand)
        lo, hi = self.search.weight_range
        if BASE_WEIGHT in self.names and cand.method == "task_arithmetic" and not cand.normalize:
            # base + sum_i l w_i (t_i - base) is the linear merge with weights l w_i and
            # 1 - sum_i l w_i for the base (the base itself: all w_i = 0).
            mix = {n: cand.lambda_ * w for n, w in cand.weights.items()}
            cand = MergeSpec(method="linear", weights={**mix, BASE_WEIGHT: 1 - sum(mix.values())}, normalize=True)
        weights = [cand.weights.get(n, 0.0) for n in self.names]
        if not self.search.signed_weights:
            weights = [max(w, 0.0) for w in weights]
        top = max(abs(w) for w in weights)
        if self.search.method == "linear" and cand.method == "linear" and top > 0 and self.search.normalize is not False:
            # Normalized linear merges are scale-free: scale so the largest |weight| is halfway
            # up the range's positive part, inside the box where CMA-ES' first steps stay
            # (at `hi` a uniform start would sit in a corner, half of every step out of bounds).
            weights = [w * (max(lo, 0.0) + hi) / 2 / top for w in weights]
        if self.gated:  # a left-out member sits a margin below its gate, not on it
            weights = [w if w > 0 else -GATE_MARGIN * hi for w in weights]
            lo = -hi
        params = {weight_param(n): min(max(w, lo), hi) for n, w in zip(self.names, weights, strict=True)}
        if "density" in self.searched:
            dlo, dhi = self.search.density_range
            params["density"] = min(max(cand.density if cand.density is not None else 1.0, dlo), dhi)
        if "lambda" in self.searched:
            llo, lhi = self.search.lambda_range
            params["lambda"] = min(max(cand.lambda_, llo), lhi)
        return params
