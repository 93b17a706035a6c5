"""Fused merges over flat buffers: the pool as one [N, P] tensor, the output one [P] tensor.

A candidate is a loop over chunks of P; each chunk is a handful of large ops whose fp32
accumulator stays in cache, so the pool is read once and the output written once. Per element
the operations are exactly those of merge_methods.py (same order, same fp32 work dtype), so the
results are bit-identical to the per-tensor reference formulas (and to mergekit)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evaluators.streaming import device_chunks

FUSED = frozenset({"linear", "task_arithmetic"})
# 1M fp32 elements = 4 MiB: fits the caches of a server CPU; on a GPU a larger chunk keeps the
# kernels large (the bound on extra memory is still one chunk).
CPU_CHUNK, GPU_CHUNK = 1 << 20, 1 << 24


def _chunk(device: torch.device) -> int:
    return GPU_CHUNK if device.type == "cuda" else CPU_CHUNK


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def flat_task_vectors(flat: torch.Tensor, flat_base: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """d = t - base for the whole pool in fp32, chunk by chunk (no full-size temporaries)."""
    work = work_dtype(flat.dtype)
    out = torch.empty(flat.shape, dtype=work, device=flat.device) if out is None else out
    step = _chunk(flat.device)
    for s in range(0, flat.shape[1], step):
        e = min(flat.shape[1], s + step)
        torch.sub(flat[:, s:e].to(work), flat_base[s:e].to(work), out=out[:, s:e])
    return out


@torch.no_grad()
def linear_into(out: torch.Tensor, flat: torch.Tensor, weights: Sequence[float], *, normalize: bool,
                stage: bool = False) -> None:
    """out = sum_i w_i t_i (/ sum_i w_i), accumulated like merge_methods.linear. ``flat`` may
    live on the host (streamed to ``out``'s device, see streaming.py)."""
    work = work_dtype(flat.dtype)
    w = torch.as_tensor(weights, dtype=work, device=out.device)
    total = w.sum()
    step = _chunk(out.device)
    acc_buf = torch.empty(min(step, flat.shape[1]), dtype=work, device=out.device)
    for s, e, chunk in device_chunks(flat, out.device, step, stage=stage):
        acc = acc_buf[: e - s]
        acc.zero_()
        for i in range(flat.shape[0]):
            acc.addcmul_(chunk[i], w[i])
        if normalize:
            acc.div_(total)
        out[s:e].copy_(acc)


@torch.no_grad()
def task_arithmetic_into(
    out: torch.Tensor,
    flat_base: torch.Tensor,
    flat_deltas: torch.Tensor,
    weights: Sequence[float],
    *,
    lambda_: float,
    normalize: bool,
    stage: bool = False,
) -> None:
    """out = base + lambda * sum_i w_i d_i (/ sum_i w_i), as merge_methods._combine computes it."""
    work = flat_deltas.dtype
    w = torch.as_tensor(weights, dtype=work, device=out.device).reshape(-1, 1)
    divisor = w.sum(dim=0)
    divisor[divisor.abs() < 1e-8] = 1
    step = _chunk(out.device)
    chunks = zip(device_chunks(flat_deltas, out.device, step, stage=stage),
                 device_chunks(flat_base, out.device, step, stage=stage), strict=True)
    for (s, e, deltas), (_, _, base) in chunks:
        mixed = (deltas * w).sum(dim=0)
        if normalize:
            mixed = mixed / divisor
        if lambda_ != 1:
            mixed = mixed * lambda_
        out[s:e].copy_(base.to(work) + mixed)
