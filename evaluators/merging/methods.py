"""Merge methods: one small pure function each, formulas identical to mergekit's, and
merge_tensor, which applies a MergeSpec (contract/merge.py) to one parameter with them. What each
method needs (a base, a density, a seed) is in contract/methods.py.

Every function takes the pool stacked along dim 0 (``tensors`` or task vectors ``deltas``
of shape [N, *shape]) and a weight vector of length N, and returns one merged tensor. They
never mutate their inputs, so the resident pool can be reused by every candidate.

References (mergekit 0.1.x, ``merge_methods/linear.py``, ``generalized_task_arithmetic.py``,
``sparsify.py``):
- linear: sum_i w_i t_i, divided by sum_i w_i when ``normalize`` (default on).
- task_arithmetic: base + lambda * sum_i w_i d_i, d_i = t_i - base (normalize off by default).
- ties: d_i -> top-k by magnitude at ``density``; elect the sign of sum_i w_i d_i; keep the
  entries agreeing with it; divide by the sum of the kept weights (normalize on by default).
- dare_ties / dare_linear: d_i -> Bernoulli(density) mask, rescaled to keep the L1 norm of d_i
  (mergekit's ``rescale``); then the TIES consensus (dare_ties) or a plain sum (dare_linear).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch

from contract.merge import MergeSpec

Density = float | Sequence[float]


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    # mergekit computes in fp32 unless the inputs are fp64; we keep the same rule so that
    # bf16/fp16 pools merge in fp32 and are cast back once at the end.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _as_weights(weights: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).reshape(-1)
    if w.numel() != like.shape[0]:
        raise ValueError(f"got {w.numel()} weights for a pool of {like.shape[0]} tensors")
    return w.reshape((-1,) + (1,) * (like.dim() - 1))


def _per_model(density: Density, n: int) -> list[float]:
    values = [float(density)] * n if isinstance(density, int | float) else list(density)
    if len(values) != n:
        raise ValueError(f"got {len(values)} densities for a pool of {n} tensors")
    return values


def linear(
    tensors: torch.Tensor, weights: Sequence[float] | torch.Tensor, *, normalize: bool = True
) -> torch.Tensor:
    """Weighted sum of the pool (mergekit ``linear``). Accumulated with ``addcmul_`` in pool
    order, as mergekit does, so the fused multiply-adds round identically."""
    work = _work_dtype(tensors)
    w = torch.as_tensor(weights, dtype=work, device=tensors.device).reshape(-1)
    if w.numel() != tensors.shape[0]:
        raise ValueError(f"got {w.numel()} weights for a pool of {tensors.shape[0]} tensors")
    out = torch.zeros(tensors.shape[1:], dtype=work, device=tensors.device)
    for t, coefficient in zip(tensors, w, strict=True):
        out.addcmul_(t, coefficient)
    if normalize:
        out.div_(w.sum())
    return out.to(tensors.dtype)


def task_vectors(base: torch.Tensor, tensors: torch.Tensor) -> torch.Tensor:
    """d_i = t_i - base, in the work dtype (computed once per study by the resident pool)."""
    dtype = _work_dtype(base)
    return tensors.to(dtype) - base.to(dtype).unsqueeze(0)


def magnitude_order(delta: torch.Tensor) -> torch.Tensor:
    """Entry indices by decreasing |value|, exactly as mergekit ranks them. A task vector never
    changes during a study, so the resident pool computes this once and reuses it."""
    magnitudes = delta.abs().reshape(-1)
    if magnitudes.device.type == "cpu":
        magnitudes = magnitudes.float()
    return torch.argsort(magnitudes, descending=True)


def magnitude_ranks(delta: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Each entry's position in magnitude_order: the top k are the entries ranked below k, so a
    cached ranking serves every density with one comparison (no scatter)."""
    order = magnitude_order(delta)
    ranks = torch.empty(order.numel(), dtype=dtype, device=order.device)
    ranks[order] = torch.arange(order.numel(), dtype=dtype, device=order.device)
    return ranks


def magnitude_prune(delta: torch.Tensor, density: float, order: torch.Tensor | None = None,
                    rank: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the top ``density`` fraction of entries by |value| (mergekit ``magnitude``);
    ``order`` (magnitude_order) or ``rank`` (magnitude_ranks): computed before."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    if rank is not None:
        return delta * (rank < k).reshape_as(delta).to(delta.dtype)
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[(magnitude_order(delta) if order is None else order)[:k]] = 1
    return delta * mask.reshape_as(delta)


def bernoulli_drop(
    delta: torch.Tensor,
    density: float,
    *,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE: keep each entry with probability ``density``; rescale to the original L1 norm."""
    if density >= 1:
        return delta
    keep = torch.bernoulli(torch.full_like(delta, density), generator=generator)
    masked = delta * keep
    if not rescale:
        return masked
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:  # mergekit's eps: nothing sensible to rescale
        return masked
    return masked * (before / after)


def sign_consensus(weighted: torch.Tensor) -> torch.Tensor:
    """TIES sign election by total mass (mergekit ``get_mask(method='sum')``)."""
    majority = (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
    return weighted.sign() == majority


def _combine(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    *,
    consensus: bool,
    normalize: bool,
    lambda_: float,
) -> torch.Tensor:
    """The shared tail of mergekit's generalized task arithmetic."""
    w = _as_weights(weights, deltas)
    weighted = deltas * w
    if consensus:
        mask = sign_consensus(weighted)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return (base.to(mixed.dtype) + mixed).to(base.dtype)


def task_arithmetic(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    *,
    lambda_: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """Task arithmetic (Ilharco et al. 2023): base + lambda * sum_i w_i d_i."""
    return _combine(base, deltas, weights, consensus=False, normalize=normalize, lambda_=lambda_)


def ties(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    *,
    density: Density,
    lambda_: float = 1.0,
    normalize: bool = True,
    orders: torch.Tensor | None = None,
    ranks: torch.Tensor | None = None,
) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023): trim, elect sign, disjoint merge. ``orders`` or ``ranks``
    ([N, numel], from magnitude_order / magnitude_ranks) skip re-ranking each task vector."""
    n = deltas.shape[0]
    densities = _per_model(density, n)
    orders = orders if orders is not None else [None] * n
    ranks = ranks.reshape(n, -1) if ranks is not None else [None] * n
    trimmed = torch.stack([magnitude_prune(d, p, o, r) for d, p, o, r in zip(deltas, densities, orders, ranks,
                                                                             strict=True)])
    return _combine(base, trimmed, weights, consensus=True, normalize=normalize, lambda_=lambda_)


def _dare(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    *,
    density: Density,
    consensus: bool,
    lambda_: float,
    normalize: bool,
    rescale: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    densities = _per_model(density, deltas.shape[0])
    dropped = torch.stack(
        [
            bernoulli_drop(d, p, rescale=rescale, generator=generator)
            for d, p in zip(deltas, densities, strict=True)
        ]
    )
    return _combine(
        base, dropped, weights, consensus=consensus, normalize=normalize, lambda_=lambda_
    )


def dare_ties(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    *,
    density: Density,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE (Yu et al. 2024) drop-and-rescale, then TIES sign consensus."""
    return _dare(
        base, deltas, weights, density=density, consensus=True, lambda_=lambda_,
        normalize=normalize, rescale=rescale, generator=generator,
    )


def dare_linear(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    *,
    density: Density,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE drop-and-rescale, then a plain weighted sum of task vectors."""
    return _dare(
        base, deltas, weights, density=density, consensus=False, lambda_=lambda_,
        normalize=normalize, rescale=rescale, generator=generator,
    )


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "dare_ties": dare_ties,
    "dare_linear": dare_linear,
}


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
    (a granular spec's group weights, evaluators/merging/granularity.py); None: the spec's."""
    weights = spec.weight_vector(names) if weights is None else list(weights)
    if spec.method == "linear":
        assert tensors is not None
        return linear(tensors, weights, normalize=spec.resolved_normalize)
    assert base is not None and deltas is not None
    kwargs = method_kwargs(spec, names, tensor_name, deltas.device)
    if spec.method == "ties" and ranks is not None:
        kwargs["ranks"] = ranks
    return METHODS[spec.method](base, deltas, weights, **kwargs)


def method_kwargs(spec: MergeSpec, names: list[str], tensor_name: str, device: torch.device) -> dict:
    """A task-vector method's parameters for one tensor (the per-tensor and chunked paths share them)."""
    kwargs: dict = {"lambda_": spec.lambda_, "normalize": spec.resolved_normalize}
    if spec.info.uses_density:
        kwargs["density"] = spec.density_vector(names)
    if spec.info.randomized:
        kwargs["generator"] = generator_for(spec, tensor_name, device)
    return kwargs


def generator_for(spec: MergeSpec, tensor_name: str, device: torch.device) -> torch.Generator | None:
    """A per-tensor generator: DARE masks depend only on (seed, tensor), not on order."""
    if not spec.info.randomized:
        return None
    g = torch.Generator(device=device)
    g.manual_seed((spec.seed * 1_000_003 + zlib.crc32(tensor_name.encode())) % (2**63))
    return g
