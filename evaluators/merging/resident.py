"""The resident pool and model: tensors are loaded once per study, and every candidate is written
in place into one transformers model. Nothing is written to disk or reloaded per trial.

Layout: when every tensor has one floating dtype (the usual case), the pool is one flat
[N, P] buffer, the base one [P] buffer and the model's parameters are views into one [P] output
buffer. Linear and task-arithmetic candidates are then a chunked loop of a few fused ops over
the flat buffers (fused.py), written straight into the parameters' storage with at most one
fp32 chunk of extra memory. Other methods (TIES, DARE: per-tensor top-k / masks) and mixed
dtypes use the per-tensor formulas of merge_methods.py, which are also the reference.

Memory (memory_budget.py): the study's budget decides placement, and what it leaves beside the
pool, base and model holds caches while they fit: fp32 task vectors (a prefix of the flat
layout, for task arithmetic and the task vectors of TIES/DARE) and int32 magnitude rankings
(TIES). Whatever does not fit is formed per chunk / ranked per candidate, bit for bit alike."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel

from contract.granularity import Granularity
from contract.merge import BASE_WEIGHT, MergeSpec
from evaluators.merging import bounded as bounded_merge
from evaluators.merging import fused, memory_budget, native, streaming
from evaluators.merging.granularity import TensorGroups, layout_key
from evaluators.merging.methods import magnitude_ranks, merge_tensor, method_kwargs, task_vectors
from evaluators.options import EvaluatorOptions
from evaluators.pool.validation import PoolError, PoolInfo, load_checkpoint_tensors

log = logging.getLogger(__name__)
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ResidentPool:
    """All checkpoints stacked per parameter ([N, *shape] views of one flat [N, P] buffer when
    the dtype is uniform) and the base; task vectors are cached or formed as they are used.
    ``budget``: bytes (or a MERGEOPT_MEMORY_BUDGET string); None: the options' (options.py), else
    the default share."""

    def __init__(self, pool: PoolInfo, device: torch.device, progress: bool = False,
                 budget: int | str | None = None, options: EvaluatorOptions | None = None) -> None:
        self.pool = pool
        self.device = device
        self.options = options = options or EvaluatorOptions()
        native.configure(options.native, options.cache_dir)
        # At study start, before the pool loads.
        self.budget = memory_budget.resolve(device, options.memory_budget if budget is None else budget)
        self.tensor_names = sorted(pool.reference.tensors)
        self.checkpoint_names = pool.names
        ref = pool.reference.tensors
        self.shapes = {k: tuple(ref[k].shape) for k in self.tensor_names}
        self.offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for k in sorted(self.tensor_names, key=layout_key):  # each weight group a few long stretches
            self.offsets[k] = (start, start + math.prod(self.shapes[k]))
            start = self.offsets[k][1]
        self.numel = start
        n = len(pool.checkpoints)
        dtypes = {FLOAT_DTYPES.get(ref[k].dtype) for k in self.tensor_names}  # header names: F32, BF16...
        uniform = len(dtypes) == 1 and None not in dtypes
        self.resident_bytes = streaming.resident_bytes(n, self.numel, next(iter(dtypes)).itemsize if uniform else 4,
                                                       pool.base is not None)
        # Over the budget of a GPU: the flat pool stays in pinned host memory and is streamed.
        self.streamed = uniform and streaming.should_stream(n, self.numel, next(iter(dtypes)).itemsize, device,
                                                            self.budget, options.pool_on)
        self.storage = torch.device("cpu") if self.streamed else device
        if self.streamed:
            log.info("pool of %d x %d parameters kept in host memory and streamed to %s", n, self.numel, device)
        self.flat: torch.Tensor | None = None  # [N, P] when the layout is uniform
        # [N + 1, P] with a base: its row follows the checkpoints' (flat and flat_base are views),
        # so a linear merge with the base as a member (pool.base_in_search) is one fused pass.
        self.members: torch.Tensor | None = None
        self.stacks: dict[str, torch.Tensor] = {}
        for i, info in enumerate(tqdm(pool.checkpoints, desc="loading pool", disable=not progress)):
            for k, t in zip(self.tensor_names, load_checkpoint_tensors(info, self.tensor_names, self.storage), strict=True):
                if i == 0 and not self.stacks and uniform:
                    self.members = self._buffer((n + (pool.base is not None), self.numel), t.dtype)
                    self.flat = self.members[:n]
                if k not in self.stacks:
                    self.stacks[k] = self._view(self.flat, k) if self.flat is not None else torch.empty(
                        (n, *t.shape), dtype=t.dtype, device=self.storage)
                self.stacks[k][i].copy_(t)
        self.base: dict[str, torch.Tensor] | None = None
        self.flat_base: torch.Tensor | None = None
        if pool.base is not None:
            loaded = load_checkpoint_tensors(pool.base, self.tensor_names, self.storage)
            if self.flat is not None:
                self.flat_base = self.members[n]
                self.base = {k: self._view(self.flat_base, k) for k in self.tensor_names}
                for k, t in zip(self.tensor_names, loaded, strict=True):
                    self.base[k].copy_(t)
            else:
                self.base = dict(zip(self.tensor_names, loaded, strict=True))
        self._groups: dict[str, tuple[TensorGroups, fused.Runs, list[tuple[int, int]]]] = {}
        # Caches take what the budget leaves beside the floor and the bounded paths' scratch (a
        # streamed pool has no room to spare on its device: none). The model is loaded after
        # this, so the floor counts it already.
        scratch = int(bounded_merge.SCRATCH_SHARE * self.resident_bytes)
        self.caches = memory_budget.Caches(0 if self.streamed else self.budget, self.resident_bytes + scratch)

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self.streamed:
            return streaming.host_buffer(shape, dtype)
        return torch.empty(shape, dtype=dtype, device=self.storage)

    def _view(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        s, e = self.offsets[name]
        return flat[..., s:e].unflatten(-1, self.shapes[name])

    def deltas(self) -> _Deltas:
        """Task vectors d_i = t_i - base in the work dtype, per tensor: a view of the cached flat
        task vectors where they cover it, else formed as used (N x P fp32 may not fit)."""
        if self.base is None:
            raise PoolError("this merge method needs a base model: set pool.base")
        return _Deltas(self)

    def flat_task_vectors(self) -> torch.Tensor | None:
        """[N, P'] fp32 task vectors of the first P' entries of the flat layout, P' as many as the
        budget holds (None: not one chunk's worth); built once, by the first candidate needing it."""
        if self.flat is None or self.flat_base is None:
            return None
        cached = self.caches.get("task_vectors", "flat")
        if cached is None:
            n, work = self.flat.shape[0], fused.work_dtype(self.flat.dtype)
            width = min(self.numel, self.caches.room("task_vectors") // (n * work.itemsize))
            width -= width % fused.CPU_CHUNK if width < self.numel else 0  # whole chunks
            if width <= 0:
                return None
            cached = self.caches.put("task_vectors", "flat", n * width * work.itemsize,
                                     lambda: fused.flat_task_vectors(self.flat[:, :width], self.flat_base[:width]))
        return cached

    def groups(self, granularity: Granularity) -> tuple[TensorGroups, fused.Runs, list[tuple[int, int]]]:
        """The tensors' groups for ``granularity`` and the runs of the flat layout, built once."""
        key = granularity.model_dump_json()
        if key not in self._groups:
            groups = TensorGroups.build(granularity, self.tensor_names)
            self._groups[key] = (groups, *groups.runs(self.offsets))
        return self._groups[key]

    def tensor_weights(self, spec: MergeSpec, tensor_name: str) -> list[float] | None:
        """This tensor's weight per checkpoint under a granular spec; None: the spec's own."""
        if spec.granularity is None or spec.group_weights is None:
            return None
        groups = self.groups(spec.granularity)[0]
        return groups.weights_at(spec.group_weights, self.checkpoint_names, groups.key(tensor_name))

    def magnitude_ranks(self, name: str) -> torch.Tensor | None:
        """[N, numel] rank of each task-vector entry in mergekit's magnitude order (int32 below
        2**31 entries), kept while the budget holds it; None: rank per candidate instead."""
        ranks = self.caches.get("ties_ranks", name)
        if ranks is None:
            n, numel = len(self.checkpoint_names), math.prod(self.shapes[name])
            dtype = torch.int32 if numel < 2**31 else torch.int64
            ranks = self.caches.put(  # scratch: one row ranked at a time (checked before it is formed)
                "ties_ranks", name, n * numel * dtype.itemsize, lambda: self._ranks(name, dtype),
                scratch=bounded_merge.row_scratch(1, numel))
        return ranks

    def _ranks(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        base, rows = self.base[name], self.stacks[name]
        return torch.stack([magnitude_ranks(task_vectors(base, rows[i:i + 1])[0], dtype) for i in range(len(rows))])

    def merged(self, spec: MergeSpec, tensor_name: str, dtype: torch.dtype | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """One merged tensor by the reference (per-tensor) formulas. None: in the work dtype (fp32;
        fp64 for fp64 tensors), cast back to the pool's dtype, as the search scores it. ``dtype``:
        as mergekit's `dtype: ...` does it: inputs cast to it, the formulas run in it (linear
        accumulates in fp32) and the result is left in it, so the caller casts once."""
        if spec.has_base_weight:
            return self._merged_with_base(spec, tensor_name, dtype)
        stack = self.stacks[tensor_name]
        if dtype is not None and not stack.is_floating_point():
            dtype = None
        if not spec.needs_base:
            return merge_tensor(spec, self.checkpoint_names, tensor_name, weights=self.tensor_weights(spec, tensor_name),
                                tensors=stack if dtype is None else stack.to(dtype))
        if self.base is None:
            raise PoolError("this merge method needs a base model: set pool.base")
        base = self.base[tensor_name]
        weights = self.tensor_weights(spec, tensor_name)
        work = dtype is None or dtype == fused.work_dtype(stack.dtype)
        ranks = self.magnitude_ranks(tensor_name) if spec.method == "ties" and work else None
        if ranks is not None and dtype is None and ranks.dtype == torch.int32 and native.supports(
                base if out is None else out, stack, base, max_n=native.MAX_N):  # one compiled pass
            return native.ties(stack, base, ranks, weights or spec.weight_vector(self.checkpoint_names),
                               spec.density_vector(self.checkpoint_names), normalize=spec.resolved_normalize,
                               lambda_=spec.lambda_, out=out)
        route = bounded_merge.route(len(self.checkpoint_names), base.numel(), self.resident_bytes,
                                    self.options.bounded_min) \
            if spec.method in bounded_merge.METHODS and stack.is_floating_point() else None
        if route is not None and work:  # cached rankings: mergekit's ranking at no scratch
            return self._merged_in_chunks(spec, tensor_name, weights, dtype, out, ranks=ranks,
                                          ranked=route == "ranked" or ranks is not None)
        if work:
            # The task vectors are t - base in the work dtype: exact casts, then one subtraction,
            # which is what mergekit computes with that dtype.
            deltas = self.deltas()[tensor_name]
        else:  # mergekit subtracts (and merges) in the merge dtype itself
            deltas = stack.to(dtype) - base.to(dtype).unsqueeze(0)
        return merge_tensor(spec, self.checkpoint_names, tensor_name, weights=weights,
                            base=base if dtype is None else base.to(dtype), deltas=deltas, ranks=ranks)

    def _merged_in_chunks(self, spec: MergeSpec, tensor_name: str, weights: list[float] | None,
                          dtype: torch.dtype | None, out: torch.Tensor | None, *, ranked: bool,
                          ranks: torch.Tensor | None) -> torch.Tensor:
        """A large TIES / DARE tensor with scratch bounded by a chunk (bounded_merge.py). The search
        and the export both take this path, so an exported merge is the one that was scored."""
        base = self.base[tensor_name]
        kwargs = method_kwargs(spec, self.checkpoint_names, tensor_name, base.device)
        kwargs.update(dtype=dtype, ranked=ranked)
        if ranks is not None:
            kwargs["ranks"] = ranks
        weights = weights if weights is not None else spec.weight_vector(self.checkpoint_names)
        return bounded_merge.METHODS[spec.method](self.stacks[tensor_name], base, weights, out=out, **kwargs)

    def _merged_with_base(self, spec: MergeSpec, tensor_name: str, dtype: torch.dtype | None) -> torch.Tensor:
        """A linear merge whose last member is the base (as the flat path and the export order it)."""
        if self.base is None:
            raise PoolError(f"the merge weighs the base ('{BASE_WEIGHT}') but pool.base is not set")
        if spec.granularity is not None:
            raise PoolError("per-group weights with the base as a member are not supported yet")
        stack = torch.cat([self.stacks[tensor_name], self.base[tensor_name].unsqueeze(0)])
        if dtype is not None and stack.is_floating_point():
            stack = stack.to(dtype)
        return merge_tensor(spec, [*self.checkpoint_names, BASE_WEIGHT], tensor_name, tensors=stack)

    def merge_flat_into(self, spec: MergeSpec, out: torch.Tensor) -> bool:
        """Write a linear / task-arithmetic merge into the flat [P] ``out``; False if this spec
        or layout has no fused path (the caller then merges per tensor)."""
        if spec.has_base_weight:  # linear over the checkpoints' and the base's rows
            if self.members is None or self.flat_base is None or spec.granularity is not None:
                return False
            fused.linear_into(out, self.members, spec.weight_vector([*self.checkpoint_names, BASE_WEIGHT]),
                              normalize=spec.resolved_normalize, stage=self.streamed)
            return True
        if self.flat is None or spec.method not in fused.FUSED:
            return False
        weights, runs = spec.weight_vector(self.checkpoint_names), None
        if spec.granularity is not None and spec.group_weights is not None:  # one weight row per run
            groups, runs, keys = self.groups(spec.granularity)
            weights = [groups.weights_at(spec.group_weights, self.checkpoint_names, k) for k in keys]
        if spec.method == "linear":
            fused.linear_into(out, self.flat, weights, normalize=spec.resolved_normalize, stage=self.streamed,
                              runs=runs)
        else:
            self.deltas()  # the base check
            fused.task_arithmetic_into(out, self.flat_base, self.flat, weights, lambda_=spec.lambda_,
                                       normalize=spec.resolved_normalize, stage=self.streamed, runs=runs,
                                       cached=None if fused.native_task_arithmetic(out, self.flat_base, self.flat,
                                                                                   self.streamed)
                                       else self.flat_task_vectors())
        return True


class _Deltas(Mapping):
    """name -> [N, ...] task vectors of that tensor, formed on access (merge_methods.task_vectors)."""

    def __init__(self, pool: ResidentPool) -> None:
        self.pool = pool

    def __getitem__(self, name: str) -> torch.Tensor:
        pool = self.pool
        cached = pool.caches.get("task_vectors", "flat")
        if cached is not None and pool.offsets[name][1] <= cached.shape[1]:
            return pool._view(cached, name)
        return task_vectors(pool.base[name], pool.stacks[name])

    def __iter__(self):
        return iter(self.pool.tensor_names)

    def __len__(self) -> int:
        return len(self.pool.tensor_names)


class ResidentModel:
    """One transformers model whose parameters are overwritten in place by each candidate."""

    def __init__(self, pool: ResidentPool, source: Path | None = None) -> None:
        """``source``: the reference's folder as staged for transformers (pool_staging.py)."""
        self.pool = pool
        ref = pool.pool.reference
        try:
            model, info = AutoModelForCausalLM.from_pretrained(str(source or ref.path), dtype="auto",
                                                               output_loading_info=True)
        except Exception as exc:
            raise PoolError(f"checkpoint '{ref.name}': transformers cannot load it: {exc}") from exc
        # What transformers initialized at random is never written by a merge (validate_pool
        # checks the same from the config; this covers models it could not build).
        params = dict(model.named_parameters(remove_duplicate=False))  # buffers are built, not random
        unset = sorted(set(info.get("missing_keys") or ()) & (set(params) - set(pool.tensor_names)))
        if unset:
            raise PoolError(f"checkpoint '{ref.name}': the model's parameter '{unset[0]}' has no tensor in "
                            "its files; it would be left at random initialization")
        self.model: PreTrainedModel = model.to(pool.device).eval()
        state = self.model.state_dict()
        missing = [n for n in pool.tensor_names if n not in state]
        if missing:
            raise PoolError(f"checkpoint '{ref.name}': tensor '{missing[0]}' is not a parameter of the model")
        del state, params  # held, they would keep every loaded parameter alive beside its flat copy
        self.flat_out = self._flatten_parameters()
        # state_dict() tensors share storage with the parameters: copy_ writes the model.
        state = self.model.state_dict()
        self.targets = {n: state[n] for n in pool.tensor_names}

    @torch.no_grad()
    def _flatten_parameters(self) -> torch.Tensor | None:
        """Re-point every parameter at a view of one flat buffer laid out like the pool."""
        pool = self.pool
        if pool.flat is None:
            return None
        params = dict(self.model.named_parameters(remove_duplicate=False))
        if any(n not in params or params[n].dtype != pool.flat.dtype for n in pool.tensor_names):
            return None
        flat = torch.empty(pool.numel, dtype=pool.flat.dtype, device=pool.device)
        for n in pool.tensor_names:
            view = pool._view(flat, n)
            view.copy_(params[n].data)
            params[n].data = view  # tied parameters share the Parameter object, so follow
        return flat

    @torch.no_grad()
    def materialize(self, spec: MergeSpec) -> PreTrainedModel:
        if self.flat_out is None or not self.pool.merge_flat_into(spec, self.flat_out):
            for name, target in self.targets.items():
                merged = self.pool.merged(spec, name, out=target)  # chunked merges write into it
                if merged is not target:
                    target.copy_(merged)
        return self.model

    @torch.no_grad()
    def state_for_export(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        """Merged tensors under their checkpoint names (the file layout, not the module layout)."""
        self.materialize(spec)
        return {n: t.detach().to("cpu").contiguous() for n, t in self.targets.items()}
