"""Prefix-shared log-likelihood scoring for causal LMs.

lm-eval's HF scorer runs one forward over ``context + continuation[:-1]`` per request; it shares
that forward between requests only when the continuations are one token. Multiple-choice tasks
with multi-token endings (HellaSwag, ARC, PIQA...) therefore recompute the same long context once
per choice. Here requests are grouped by the part of their input window they share: that prefix
runs once, and every distinct continuation input is scored from its cached keys/values.

Semantics are HFLM's (lm_eval/models/huggingface.py, ``_loglikelihood_tokens``, causal branch):
the input window is ``(context + continuation)[-(max_length + 1):][:-1]`` with positions from 0,
so a left-truncated request shares only with requests truncated to the same window. A request's
window is split as ``prefix = window[:-len(cont)]`` (run once per group, cached) and
``suffix = window[-len(cont):]`` (its logits score ``cont``). A group with one distinct suffix has
nothing to share and runs as one plain sequence, like HFLM (1-token MC: one forward per context).

Two ways to run a batch of groups (``score(mode=...)``; "auto" picks):
- tree (eager/sdpa attention, no sliding windows): one forward, one row per group: the prefix,
  then every suffix, each suffix attending to the prefix and to itself only (a 4D mask), its
  positions continuing from the prefix. Each unique token is computed once.
- cache (other attention kernels): the prefixes run once (right-padded), then the suffixes,
  right-padded, attend to copies of their group's cached keys/values through a mask of
  ``[prefix real tokens, prefix padding = 0, own tokens]``; no query ever has every key masked.
Rows with nothing to share run as plain right-padded causal sequences, exactly as HFLM. Logits
and HFLM's log_softmax are computed only where a token is scored. At most ``batch_size`` rows
per forward, as HFLM's batch size.

Supported: models whose forward takes ``position_ids`` and ``attention_mask`` (and, for the
cache path, a cache: ``cache`` or ``past_key_values``, returned as a ``DynamicCache`` of
full-attention layers). Anything else raises ``PrefixUnsupported`` before any score is
returned; the caller then uses lm-eval's own path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from evaluators.adapters import transformers as transformers_adapter

logger = logging.getLogger(__name__)


class PrefixUnsupported(RuntimeError):
    """The model's cache cannot be shared between rows; use lm-eval's path instead."""


@dataclass
class Row:
    """One forward row: ``tokens`` (after the group's prefix); each read scores ``targets``
    against the logits at ``tokens`` positions ``start .. start + len(targets)``."""

    tokens: tuple[int, ...]
    reads: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (request, start, targets)


@dataclass
class Group:
    prefix: tuple[int, ...]  # empty: plain rows, no cache
    rows: list[Row]


def plan(requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> list[Group]:
    """Groups of rows for ``(context_enc, continuation_enc)`` requests, HFLM's truncation."""
    shared: dict[tuple[int, ...], dict[tuple[int, ...], Row]] = {}
    for i, (ctx, cont) in enumerate(requests):
        if not ctx or not cont or len(cont) > max_length:
            raise ValueError(f"request {i}: need a context, a continuation, and len(continuation) <= {max_length}")
        window = (list(ctx) + list(cont))[-(max_length + 1):][:-1]
        cut = len(window) - len(cont)
        rows = shared.setdefault(tuple(window[:cut]), {})
        rows.setdefault(tuple(window[cut:]), Row(tuple(window[cut:]))).reads.append((i, 0, list(cont)))
    groups, plain = [], {}
    for prefix, rows in shared.items():
        if len(rows) > 1 and prefix:
            groups.append(Group(prefix, list(rows.values())))
            continue
        for row in rows.values():  # nothing to share: the whole window as one sequence
            whole = prefix + row.tokens
            merged = plain.setdefault(whole, Row(whole))
            merged.reads.extend((i, len(prefix) + s, t) for i, s, t in row.reads)
    groups.extend(Group((), [row]) for row in plain.values())
    # Longest first (as HFLM): padding stays small and an out-of-memory shows on the first batch.
    groups.sort(key=lambda g: (-(len(g.prefix) + max(len(r.tokens) for r in g.rows)), g.prefix))
    return groups


def batches(groups: list[Group], batch_size: int) -> list[list[Group]]:
    """Consecutive groups with at most ``batch_size`` rows in all (a bigger group alone);
    plain groups and prefix groups never share a batch."""
    out: list[list[Group]] = []
    rows = 0
    for g in groups:
        if out and bool(out[-1][0].prefix) == bool(g.prefix) and rows + len(g.rows) <= batch_size:
            out[-1].append(g)
            rows += len(g.rows)
        else:
            out.append([g])
            rows = len(g.rows)
    return out


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward argument that takes a cache: ``cache`` (transformers >= 5.2x), else the
    older ``past_key_values``; PrefixUnsupported without one, or without masks and positions."""
    params = inspect.signature(model.forward).parameters
    name = next((p for p in ("cache", "past_key_values") if p in params), None)
    missing = [p for p in ("position_ids", "attention_mask") if p not in params] + ([] if name else ["cache"])
    if missing:
        raise PrefixUnsupported(f"{type(model).__name__}.forward takes no {', '.join(missing)}")
    return name


def _padded(seqs: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (pad id 0, never attended) and their 0/1 mask."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _cache_rows(cache, index: torch.Tensor):
    """A new cache holding the prefix rows ``index`` (one per continuation row)."""
    layers = transformers_adapter.full_attention_layers(cache)
    if layers is None:
        raise PrefixUnsupported(f"cache {type(cache).__name__} is not a DynamicCache of full-attention layers")
    return transformers_adapter.dynamic_cache([(keys[index], values[index]) for keys, values in layers])


class _Scorer:
    def __init__(self, model, device: torch.device, softmax_dtype, autocast_dtype) -> None:
        self.model, self.device, self.softmax_dtype = model, device, softmax_dtype
        self.autocast_dtype = autocast_dtype
        self.keep_one = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.cache_arg = cache_kwarg(model)

    def _forward(self, **kwargs):
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype,
                                             enabled=self.autocast_dtype is not None):
            return self.model(**kwargs)

    def plain(self, rows: list[Row]) -> tuple[torch.Tensor, int]:
        """Logits of the last positions any read needs, and the position of the first one."""
        ids, _ = _padded([r.tokens for r in rows], self.device)
        width = ids.shape[1]
        first = min(start for r in rows for _, start, _ in r.reads)
        if not self.keep_one:
            return self._forward(input_ids=ids).logits, 0
        return self._forward(input_ids=ids, logits_to_keep=width - first).logits, first

    def prefix(self, groups: list[Group]):
        """Run the groups' prefixes once: their cache and padding mask. No attention mask here:
        right padding is causally invisible to the real tokens; later rows mask it out."""
        ids, mask = _padded([g.prefix for g in groups], self.device)
        extra = {"logits_to_keep": 1} if self.keep_one else {}  # prefix logits are never read
        out = self._forward(input_ids=ids, use_cache=True, **extra)
        cache = getattr(out, "cache", None)
        return (out.past_key_values if cache is None else cache), mask

    def shared(self, cache, prefix_mask: torch.Tensor, owner: list[int], rows: list[Row]) -> tuple[torch.Tensor, int]:
        index = torch.tensor(owner, device=self.device)
        ids, mask = _padded([r.tokens for r in rows], self.device)
        pmask = prefix_mask[index]
        positions = pmask.sum(dim=1, keepdim=True) + torch.arange(ids.shape[1], device=self.device)
        out = self._forward(input_ids=ids, attention_mask=torch.cat([pmask, mask], dim=1), position_ids=positions,
                            use_cache=True, **{self.cache_arg: _cache_rows(cache, index)})
        return out.logits, 0

    def tree(self, groups: list[Group]) -> tuple[torch.Tensor, int, list[list[int]]]:
        """One forward: per group its prefix then each row, every row seeing the prefix and itself
        (positions continue from the prefix), never another row. Logits from the first row on."""
        seqs, positions, segments, starts = [], [], [], []
        for g in groups:
            toks, pos, seg, st = list(g.prefix), list(range(len(g.prefix))), [-1] * len(g.prefix), []
            for j, row in enumerate(g.rows):
                st.append(len(toks))
                toks += row.tokens
                pos += range(len(g.prefix), len(g.prefix) + len(row.tokens))
                seg += [j] * len(row.tokens)
            seqs.append(toks), positions.append(pos), segments.append(seg), starts.append(st)
        ids, _ = _padded(seqs, self.device)
        width = ids.shape[1]
        pos_t = torch.zeros_like(ids)
        seg_t = torch.full_like(ids, -2)  # padding: its own segment, attends (causally) to itself
        for b, (p, sg) in enumerate(zip(positions, segments, strict=True)):
            pos_t[b, : len(p)] = torch.tensor(p)
            seg_t[b, : len(sg)] = torch.tensor(sg)
        idx = torch.arange(width, device=self.device)
        allowed = (idx[None, :] <= idx[:, None])[None] & (
            (seg_t[:, :, None] == seg_t[:, None, :]) | (seg_t[:, None, :] == -1))
        if transformers_adapter.attention_implementation(self.model.config) == "eager":  # additive float mask
            dtype = self.autocast_dtype or next(self.model.parameters()).dtype
            mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill_(~allowed, torch.finfo(dtype).min)
        else:
            mask = allowed
        first = min(st + p for g, sts in zip(groups, starts, strict=True)
                    for row, st in zip(g.rows, sts, strict=True) for _, p, _ in row.reads)
        extra = {"logits_to_keep": width - first} if self.keep_one else {}
        out = self._forward(input_ids=ids, attention_mask=mask[:, None], position_ids=pos_t, **extra)
        return out.logits, (first if self.keep_one else 0), starts


def tree_supported(model) -> bool:
    """Packed rows need a 4D mask honoured as given: transformers' eager and sdpa attention;
    not flash/flex kernels, nor sliding-window layers (a given 4D mask would override them)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None)
    sliding = (any("sliding" in t for t in types) if types is not None
               else getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True))
    return transformers_adapter.attention_implementation(config) in ("eager", "sdpa") and not sliding


def score(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int, max_length: int,
          device: torch.device | str, softmax_dtype: torch.dtype | None = None,
          autocast_dtype: torch.dtype | None = None, mode: str = "auto") -> list[tuple[float, bool]]:
    """``(log-likelihood, is_greedy)`` per ``(context_enc, continuation_enc)``, in order: what
    HFLM's ``_loglikelihood_tokens`` returns for a causal model. ``mode``: "tree" (packed rows,
    one forward per batch of groups), "cache" (prefix forward, then rows from its cache), or
    "auto" (tree where the model's attention allows it)."""
    scorer = _Scorer(model, torch.device(device), softmax_dtype, autocast_dtype)
    if mode == "auto":
        mode = "tree" if tree_supported(model) else "cache"
    results: list[tuple[float, bool] | None] = [None] * len(requests)

    def read(logits: torch.Tensor, offset: int, reads: list[tuple[int, int, int, list[int]]]) -> None:
        # reads: (request, batch row, position, targets). HFLM's log_softmax, on the scored
        # positions only; one copy to the host per batch.
        where, lengths = [], []
        for _, b, p, targets in reads:
            where += [(b, p - offset + j, t) for j, t in enumerate(targets)]
            lengths.append(len(targets))
        r_idx, p_idx, t_idx = (torch.tensor(c, device=logits.device) for c in zip(*where, strict=True))
        logprobs = F.log_softmax(logits[r_idx, p_idx], dim=-1, dtype=softmax_dtype)
        picked = logprobs.gather(1, t_idx[:, None])[:, 0].cpu().split(lengths)
        hits = (logprobs.argmax(dim=-1) == t_idx).cpu().split(lengths)
        for (i, _, _, _), lp, hit in zip(reads, picked, hits, strict=True):
            results[i] = (float(lp.sum()), bool(hit.all()))

    groups = plan(requests, max_length)
    if mode == "tree":
        for s in range(0, len(groups), batch_size):
            part = groups[s:s + batch_size]
            if not any(g.prefix for g in part):  # nothing shared: plain causal rows, no 4D mask
                rows = [g.rows[0] for g in part]
                read(*scorer.plain(rows), [(i, b, p, t) for b, row in enumerate(rows) for i, p, t in row.reads])
                continue
            logits, offset, starts = scorer.tree(part)
            read(logits, offset, [(i, b, st + p, t) for b, (g, sts) in enumerate(zip(part, starts, strict=True))
                                  for row, st in zip(g.rows, sts, strict=True) for i, p, t in row.reads])
        return results  # type: ignore[return-value]
    for batch in batches(groups, batch_size):
        if not batch[0].prefix:
            rows = [g.rows[0] for g in batch]
            read(*scorer.plain(rows), [(i, b, p, t) for b, row in enumerate(rows) for i, p, t in row.reads])
            continue
        cache, prefix_mask = scorer.prefix(batch)
        owned = [(k, row) for k, g in enumerate(batch) for row in g.rows]
        for s in range(0, len(owned), batch_size):  # one group of more than batch_size rows: slices
            part = owned[s:s + batch_size]
            rows = [row for _, row in part]
            read(*scorer.shared(cache, prefix_mask, [k for k, _ in part], rows),
                 [(i, b, p, t) for b, row in enumerate(rows) for i, p, t in row.reads])
    return results  # type: ignore[return-value]


def hflm_loglikelihood_tokens(lm, requests: list) -> list[tuple[float, bool]] | None:
    """HFLM's ``_loglikelihood_tokens`` by prefix sharing, or None where lm-eval's own path
    must run (not a causal model, automatic batch size, a cache that cannot be shared)."""
    if lm.backend != "causal" or not isinstance(lm.batch_size, int):
        return None
    try:
        res = score(lm.model, [(ctx, cont) for _, ctx, cont in requests], batch_size=lm.batch_size,
                    max_length=lm.max_length, device=lm.device, softmax_dtype=lm.softmax_dtype,
                    autocast_dtype=lm.mixed_precision_dtype)
    except PrefixUnsupported as exc:
        logger.warning("prefix-shared scoring off for this model (%s): lm-eval's own path", exc)
        lm.prefix_sharing = False  # the model does not change: do not try again
        return None
    for (request_str, _, _), answer in zip(requests, res, strict=True):
        if request_str is not None:  # as HFLM: rolling windows (None) are cached per document
            lm.cache_hook.add_partial("loglikelihood", request_str, answer)
    return res
