"""TIES and DARE over one large tensor in chunks, with memory bounded by a chunk, not the tensor.

The per-tensor formulas (merge_methods.py) hold [N, numel] fp32 task vectors and a few copies of
them (~32 B per checkpoint and entry): for a 136M-entry embedding beside 4 checkpoints, ~8 GB of
scratch next to a 6 GB pool. Every step of TIES and DARE is per entry except a few whole-row
quantities, so a tensor over CHUNK_MIN entries is merged chunk by chunk along its entries, with
those quantities found first, in one of two ways (``route``):

- ``ranked`` (the default): each task vector is ranked whole, one row at a time, by mergekit's
  own argsort (or the resident pool's cached ranking) into a 1-byte keep mask; DARE's masks and
  L1 norms are drawn and summed over the whole row, as the formula does. Bit for bit the
  per-tensor formula, at ~(28 + N) B per entry of one row instead of ~32 N.
- ``radix``, where even one row's argsort would take over SCRATCH_SHARE of what the study keeps
  resident (an embedding beside a small pool; never a tensor beside 8 x 7B): TIES' k-th largest
  |d_i| by a two-pass radix select over the fp32 bit patterns (for non-negative floats their
  order as int32 is their order as floats), keeping every entry above it and, of those equal to
  it, the first by position. That is the top-k of a stable sort: mergekit's unstable argsort
  keeps another subset of the tied entries. DARE's L1 norms are summed in fp64 over chunks.

DARE's second pass replays each row's generator from its saved state. On the CPU the masks are
the per-tensor formula's draws (mt19937 yields the same stream in chunks); CUDA's Philox offsets
advance per call, so there they are another, equally seeded draw. The combine (sign election,
disjoint mean, lambda) is merge_methods._combine on each chunk."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from evaluators.merging import methods as mm

CHUNK_MIN = 1 << 20  # smaller tensors take the per-tensor formulas: their scratch is small
BOUNDED_MIN = 1 << 24  # only tensors over this many entries are ever radix-selected
SCRATCH_SHARE = 0.10
CHUNK_ENTRIES = 1 << 22  # N x chunk entries per pass: 16 MiB of fp32, whatever N is
BINS = 1 << 16


def row_scratch(n: int, numel: int) -> int:
    """About what ranking one row whole needs: its fp32 task vector and magnitudes, argsort's
    int64 indices and sorted copy (~28 B per entry), and the N rows' 1-byte keep masks."""
    return (28 + n) * numel


def route(n: int, numel: int, resident_bytes: int, bounded_min: int | None = None) -> str | None:
    """None (the per-tensor formula), "ranked" or "radix" for one tensor of an N-checkpoint pool.
    ``bounded_min`` (MERGEOPT_BOUNDED_MIN) entries: radix-select every tensor over that size (tests, or memory)."""
    forced = bounded_min
    if forced and numel > forced:
        return "radix"
    if numel <= CHUNK_MIN:
        return None
    if not forced and numel > BOUNDED_MIN and row_scratch(n, numel) > SCRATCH_SHARE * resident_bytes:
        return "radix"
    return "ranked"


def _chunks(stack: torch.Tensor, base: torch.Tensor, chunk: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, end, task vectors [N, end - start] in the work dtype) over the flattened tensor."""
    rows, flat_base = stack.reshape(stack.shape[0], -1), base.reshape(-1)
    for s in range(0, flat_base.numel(), chunk):
        e = min(flat_base.numel(), s + chunk)
        yield s, e, mm.task_vectors(flat_base[s:e], rows[:, s:e])


def _bits(d: torch.Tensor) -> torch.Tensor:
    """|d| as int32 bit patterns, ordered as the magnitudes are. fp32 for every pool but fp64,
    whose magnitudes are ranked as mergekit ranks CPU tensors: cast to fp32 (ties included)."""
    return d.abs().float().view(torch.int32)


def _select(counts: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``counts`` [N, BINS]: the bin holding the k-th largest value and how many
    values lie in higher bins."""
    above = counts.flip(1).cumsum(1).flip(1) - counts  # values in bins higher than each bin
    bin_ = ((above < k.unsqueeze(1)) & (above + counts >= k.unsqueeze(1))).int().argmax(1)
    return bin_, above.gather(1, bin_.unsqueeze(1)).squeeze(1)


def topk_thresholds(stack: torch.Tensor, base: torch.Tensor, ks: torch.Tensor, chunk: int,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the fp32 bit pattern of its k-th largest |d| and how many entries equal to it
    are kept (k minus the entries above it)."""
    n = stack.shape[0]
    dev = stack.device
    offsets = (torch.arange(n, device=dev) * BINS).unsqueeze(1)
    high = torch.zeros(n * BINS, dtype=torch.int64, device=dev)
    for _, _, d in _chunks(stack, base, chunk):
        high += torch.bincount(((_bits(d) >> 16) + offsets).reshape(-1), minlength=n * BINS)
    ks = ks.to(dev)
    hbin, above_h = _select(high.reshape(n, BINS), ks)
    low = torch.zeros(n * BINS, dtype=torch.int64, device=dev)
    for _, _, d in _chunks(stack, base, chunk):
        bits = _bits(d)
        inside = (bits >> 16) == hbin.unsqueeze(1)
        idx = ((bits & 0xFFFF) + offsets)[inside]
        low += torch.bincount(idx, minlength=n * BINS)
    lbin, above_l = _select(low.reshape(n, BINS), ks - above_h)
    return (hbin << 16) | lbin, ks - above_h - above_l


def _trim_mask(d: torch.Tensor, threshold: torch.Tensor, quota: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Entries above the threshold, and tied ones while the row's quota lasts (by position);
    ``seen`` (ties met in earlier chunks, per row) is advanced."""
    bits = _bits(d)
    tied = bits == threshold.unsqueeze(1)
    rank = tied.cumsum(1) + seen.unsqueeze(1)  # 1-based rank of each tie in its row
    seen += tied.sum(1)
    return (bits > threshold.unsqueeze(1)) | (tied & (rank <= quota.unsqueeze(1)))


def ranked_masks(stack: torch.Tensor, base: torch.Tensor, ks: list[int], orders: torch.Tensor | None,
                 ) -> torch.Tensor:
    """[N, numel] keep masks: each row's top k by mergekit's ranking (magnitude_order), one row's
    task vector at a time; ``orders``: the rankings cached by the resident pool."""
    n, numel = stack.shape[0], base.numel()
    rows, flat_base = stack.reshape(n, -1), base.reshape(-1)
    masks = torch.zeros((n, numel), dtype=torch.bool, device=stack.device)
    for i, k in enumerate(ks):
        if k:
            order = orders[i] if orders is not None else mm.magnitude_order(
                mm.task_vectors(flat_base, rows[i:i + 1])[0])
            masks[i, order[:k]] = True
    return masks


def _output(base: torch.Tensor, out: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor:
    """Where the merge is written: ``out`` (the model's parameter, no extra copy) or a new tensor
    of ``dtype`` (None: the base's; the work dtype leaves the result unrounded, for an export)."""
    dtype = dtype or base.dtype
    if out is None:
        return torch.empty(base.shape, dtype=dtype, device=base.device)
    if out.shape != base.shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor of the base's shape and the result's dtype")
    return out


def _base_chunk(flat_base: torch.Tensor, s: int, e: int, dtype: torch.dtype | None) -> torch.Tensor:
    return flat_base[s:e] if dtype is None else flat_base[s:e].to(dtype)  # _combine rounds to its dtype


def ties(stack: torch.Tensor, base: torch.Tensor, weights: Sequence[float], *, density, lambda_: float,
         normalize: bool, chunk: int = CHUNK_ENTRIES, out: torch.Tensor | None = None,
         dtype: torch.dtype | None = None, ranked: bool = False, orders: torch.Tensor | None = None,
         ranks: torch.Tensor | None = None) -> torch.Tensor:
    """``ranked``: mergekit's ranking, row by row (``orders``: cached); else the radix select.
    ``ranks`` (the resident pool's cached magnitude_ranks): the top k of each row are the entries
    ranked below k, compared chunk by chunk (no [N, numel] mask)."""
    n, numel = stack.shape[0], base.numel()
    step = max(1, chunk // n)
    densities = mm._per_model(density, n)
    dev = stack.device
    k_list = [max(1, int(p * numel)) if 0 < p < 1 else 0 for p in densities]
    ks = torch.tensor(k_list, dtype=torch.int64, device=dev)
    trim = [0 < p < 1 and numel > 0 for p in densities]
    ranks = ranks.reshape(n, -1) if ranks is not None and any(trim) else None
    masks = ranked_masks(stack, base, k_list, orders) if ranked and any(trim) and ranks is None else None
    threshold, quota = topk_thresholds(stack, base, ks, step) if any(trim) and masks is None and ranks is None \
        else (ks, ks)
    keep_all = torch.tensor([p >= 1 for p in densities], device=dev).unsqueeze(1)
    trim_rows = torch.tensor(trim, device=dev).unsqueeze(1)
    empty = torch.tensor([p <= 0 for p in densities], device=dev)
    seen = torch.zeros(n, dtype=torch.int64, device=dev)
    out = _output(base, out, dtype)
    flat_out = out.view(-1)
    flat_base = base.reshape(-1)
    for s, e, d in _chunks(stack, base, step):
        if ranks is not None:
            picked = ranks[:, s:e] < ks.unsqueeze(1)
        else:
            picked = masks[:, s:e] if masks is not None else _trim_mask(d, threshold, quota, seen)
        mask = picked & trim_rows | keep_all
        trimmed = d * mask.to(d.dtype)  # as mergekit: delta * mask (so -0.0 where dropped)
        trimmed[empty] = 0  # density 0: zeros, as magnitude_prune returns them
        flat_out[s:e] = mm._combine(_base_chunk(flat_base, s, e, dtype), trimmed, weights, consensus=True, normalize=normalize,
                               lambda_=lambda_)
    return out


def _dare(stack: torch.Tensor, base: torch.Tensor, weights: Sequence[float], *, density, consensus: bool,
          lambda_: float, normalize: bool, rescale: bool, generator: torch.Generator | None,
          chunk: int, out: torch.Tensor | None, dtype: torch.dtype | None, ranked: bool) -> torch.Tensor:
    n, numel = stack.shape[0], base.numel()
    step = max(1, chunk // n)
    densities = mm._per_model(density, n)
    rows, flat_base = stack.reshape(n, -1), base.reshape(-1)
    gen = generator if generator is not None else torch.default_generator
    states, scale = [], [None] * n
    for i, p in enumerate(densities):  # row by row, as the per-tensor formula draws its masks
        if p >= 1:
            states.append(None)
            continue
        states.append(gen.get_state())
        if ranked:  # the whole row, summed as the formula sums it: the same scale, bit for bit
            d = mm.task_vectors(flat_base, rows[i:i + 1])[0]
            keep = torch.bernoulli(torch.full_like(d, p), generator=gen)
            before, after = d.abs().sum(), (d * keep).abs().sum()
            del d, keep
        else:
            before = after = 0.0
            for s in range(0, numel, step):
                d = mm.task_vectors(flat_base[s:s + step], rows[i:i + 1, s:s + step])[0]
                keep = torch.bernoulli(torch.full_like(d, p), generator=gen)
                before += float(d.abs().sum(dtype=torch.float64))
                after += float((d * keep).abs().sum(dtype=torch.float64))
            before, after = torch.tensor(before), torch.tensor(after)
        if rescale and before >= 1e-7 and after >= 1e-7:  # mergekit's eps
            scale[i] = (before / after).to(mm._work_dtype(flat_base))  # the formula's 0-dim ratio
    replay = []
    for st in states:
        g = None
        if st is not None:
            g = torch.Generator(device=gen.device)
            g.set_state(st)
        replay.append(g)
    out = _output(base, out, dtype)
    flat_out = out.view(-1)
    for s, e, d in _chunks(stack, base, step):
        for i, g in enumerate(replay):
            if g is not None:
                d[i] = d[i] * torch.bernoulli(torch.full_like(d[i], densities[i]), generator=g)
                if scale[i] is not None:
                    d[i] = d[i] * scale[i]
        flat_out[s:e] = mm._combine(_base_chunk(flat_base, s, e, dtype), d, weights, consensus=consensus, normalize=normalize,
                               lambda_=lambda_)
    return out


def dare_ties(stack, base, weights, *, density, lambda_: float, normalize: bool, rescale: bool = True,
              generator: torch.Generator | None = None, chunk: int = CHUNK_ENTRIES,
              out: torch.Tensor | None = None, dtype: torch.dtype | None = None, ranked: bool = False,
) -> torch.Tensor:
    return _dare(stack, base, weights, density=density, consensus=True, lambda_=lambda_, normalize=normalize,
                 rescale=rescale, generator=generator, chunk=chunk, out=out,
                 dtype=dtype, ranked=ranked)


def dare_linear(stack, base, weights, *, density, lambda_: float, normalize: bool, rescale: bool = True,
                generator: torch.Generator | None = None, chunk: int = CHUNK_ENTRIES,
                out: torch.Tensor | None = None, dtype: torch.dtype | None = None, ranked: bool = False,
) -> torch.Tensor:
    return _dare(stack, base, weights, density=density, consensus=False, lambda_=lambda_, normalize=normalize,
                 rescale=rescale, generator=generator, chunk=chunk, out=out,
                 dtype=dtype, ranked=ranked)


METHODS = {"ties": ties, "dare_ties": dare_ties, "dare_linear": dare_linear}
