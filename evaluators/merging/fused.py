"""Fused merges over flat buffers: the pool as one [N, P] tensor, the output one [P] tensor.

A candidate is a loop over chunks of P; each chunk is a handful of large ops whose fp32
accumulator stays in cache, so the pool is read once and the output written once. Per element
the operations are exactly those of merge_methods.py (same order, same fp32 work dtype), so the
results are bit-identical to the per-tensor reference formulas (and to mergekit).

Granular merges (evaluators/merging/granularity.py) pass ``runs``: stretches [start, end) of the flat
layout with the row of ``weights`` they take. A chunk is then merged piece by piece, one weight
vector per piece: still one pass over the pool, a few hundred pieces at most per candidate."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence

import torch

from evaluators.merging import native
from evaluators.merging.streaming import device_chunks

FUSED = frozenset({"linear", "task_arithmetic"})
# 1M fp32 elements = 4 MiB: fits the caches of a server CPU; on a GPU a larger chunk keeps the
# kernels large (the bound on extra memory is still one chunk).
CPU_CHUNK, GPU_CHUNK = 1 << 20, 1 << 24


def _chunk(device: torch.device) -> int:
    return GPU_CHUNK if device.type == "cuda" else CPU_CHUNK


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


Runs = Sequence[tuple[int, int, int]]


def _rows(weights, runs: Runs | None, n: int, total: int, work: torch.dtype, device) -> tuple[torch.Tensor, Runs]:
    """([R, N] weight rows, runs); without runs, one row over everything."""
    w = torch.as_tensor(weights, dtype=work, device=device).reshape(-1, n)
    return w, ([(0, total, 0)] if runs is None else runs)


def _pieces(runs: Runs, starts: list[int], s: int, e: int) -> Iterator[tuple[int, int, int]]:
    """(a, b, row) of every run overlapping [s, e), relative to s."""
    k = max(0, bisect_right(starts, s) - 1)
    while k < len(runs) and runs[k][0] < e:
        a, b, row = runs[k]
        if b > s:
            yield max(a, s) - s, min(b, e) - s, row
        k += 1


@torch.no_grad()
def linear_into(out: torch.Tensor, flat: torch.Tensor, weights, *, normalize: bool,
                stage: bool = False, runs: Runs | None = None) -> None:
    """out = sum_i w_i t_i (/ sum_i w_i), accumulated like merge_methods.linear. ``flat`` may
    live on the host (streamed to ``out``'s device, see streaming.py). ``weights``: [N], or
    [R, N] rows with ``runs``."""
    work = work_dtype(flat.dtype)
    w, runs = _rows(weights, runs, flat.shape[0], flat.shape[1], work, out.device)
    totals = [row.sum() for row in w]  # a 1-D sum per row, as the reference sums its weights
    if not stage and native.supports(out, flat):  # one compiled pass, the same arithmetic
        native.linear_pieces(out, flat, w, [float(t) for t in totals], list(runs), normalize)
        return
    starts = [r[0] for r in runs]
    step = _chunk(out.device)
    acc_buf = torch.empty(min(step, flat.shape[1]), dtype=work, device=out.device)
    for s, e, chunk in device_chunks(flat, out.device, step, stage=stage):
        acc = acc_buf[: e - s]
        for a, b, r in _pieces(runs, starts, s, e):
            part = acc[a:b]
            part.zero_()
            for i in range(flat.shape[0]):
                part.addcmul_(chunk[i, a:b], w[r, i])
            if normalize:
                part.div_(totals[r])
        out[s:e].copy_(acc)


def native_task_arithmetic(out: torch.Tensor, flat_base: torch.Tensor, flat: torch.Tensor, stage: bool) -> bool:
    """Task arithmetic runs compiled here (native.py): it forms task vectors as it reads the pool,
    faster than reading cached fp32 ones, so the resident pool caches none for it."""
    return not stage and native.supports(out, flat, flat_base, max_n=native.MAX_N)


@torch.no_grad()
def flat_task_vectors(flat: torch.Tensor, flat_base: torch.Tensor) -> torch.Tensor:
    """[N, P] task vectors t - base in the work dtype (merge_methods.task_vectors: exact casts,
    one subtraction), chunk by chunk: no temporary beyond the result."""
    out = torch.empty(flat.shape, dtype=work_dtype(flat.dtype), device=flat.device)
    step = _chunk(flat.device)
    for s in range(0, flat.shape[1], step):
        torch.sub(flat[:, s:s + step], flat_base[s:s + step].to(out.dtype), out=out[:, s:s + step])
    return out


@torch.no_grad()
def task_arithmetic_into(
    out: torch.Tensor,
    flat_base: torch.Tensor,
    flat: torch.Tensor,
    weights,
    *,
    lambda_: float,
    normalize: bool,
    stage: bool = False,
    runs: Runs | None = None,
    cached: torch.Tensor | None = None,
) -> None:
    """out = base + lambda * sum_i w_i d_i (/ sum_i w_i), as merge_methods._combine computes it.
    ``cached``: the task vectors of the first cached.shape[1] entries (flat_task_vectors, kept by
    the resident pool while its memory budget holds them); beyond them d_i = t_i - base is formed
    per chunk from the pool (``flat``), exactly as merge_methods.task_vectors forms it. Each chunk
    runs in three reused buffers, so no step allocates."""
    work = work_dtype(flat.dtype)
    n, total = flat.shape
    rows, runs = _rows(weights, runs, n, total, work, out.device)
    columns = [row.reshape(-1, 1) for row in rows]
    divisors = [w.sum(dim=0) for w in columns]
    for divisor in divisors:
        divisor[divisor.abs() < 1e-8] = 1
    if native_task_arithmetic(out, flat_base, flat, stage):
        native.task_arithmetic_pieces(out, flat_base, flat, rows, [float(d) for d in divisors], list(runs),
                                      normalize=normalize, lambda_=lambda_)
        return
    starts = [r[0] for r in runs]
    step = _chunk(out.device)
    width = cached.shape[1] if cached is not None and cached.device == out.device else 0
    scratch = torch.empty((n, min(step, total)), dtype=work, device=out.device)
    base_buf, mixed_buf = (torch.empty(min(step, total), dtype=work, device=out.device) for _ in range(2))
    chunks = zip(device_chunks(flat, out.device, step, stage=stage),
                 device_chunks(flat_base, out.device, step, stage=stage), strict=True)
    for (s, e, members), (_, _, base) in chunks:
        b = base_buf[: e - s]
        b.copy_(base)  # base.to(work)
        for a, z, r in _pieces(runs, starts, s, e):
            d = scratch[:, a:z]
            if s + z <= width:
                torch.mul(cached[:, s + a:s + z], columns[r], out=d)
            else:
                torch.sub(members[:, a:z], b[a:z], out=d)
                d.mul_(columns[r])
            mixed = torch.sum(d, dim=0, out=mixed_buf[a:z])
            if normalize:
                mixed.div_(divisors[r])
            if lambda_ != 1:
                mixed.mul_(lambda_)
            out[s + a:s + z].copy_(mixed.add_(b[a:z]))  # base + mixed (the same sum either way)
