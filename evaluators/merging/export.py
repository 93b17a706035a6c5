"""Writing a merge as a Hugging Face checkpoint (safetensors in the pool's own tensor layout,
config, tokenizer) plus the mergekit config that reproduces it. Used by `mergeopt merge` and
`mergeopt export`; never on the per-trial path.

Side files are read through fileguard (regular files inside the pool's roots, checked as they
are opened), and everything is written into a fresh folder through its descriptor, then renamed
to ``out_dir``: a link planted at the target, or anywhere on the way, is refused, never followed."""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save
from tqdm.auto import tqdm

from contract.merge import MergeSpec
from evaluators.merging import fused
from evaluators.merging.mergekit_yaml import to_mergekit_yaml
from evaluators.merging.resident import ResidentPool
from evaluators.pool.validation import PoolFileRefused
from evaluators.security import fileguard
from evaluators.security.fileguard import SIDE_FILES, FileRefused, Roots

__all__ = ["SIDE_FILES", "write_merge"]
SHARD_BYTES = 4 * 1024**3
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# safetensors' names for the dtypes a checkpoint holds (others go through safetensors' save()),
# in the order of its Dtype enum: it writes tensors by that order, descending, then by name.
ST_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
}
_RANK = {dtype: i for i, dtype in enumerate(ST_DTYPES)}
# write_merge's default ``dtype``: merged as the search scores it, in fp32 (fp64 for fp64
# tensors), and written in the pool's dtype unless ``out_dtype`` says otherwise.
SEARCH = "search"
# Called after the target was checked and before anything is written (tests widen the race here).
before_write: Callable[[Path], None] | None = None


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _write_safetensors(dir_fd: int, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """The safetensors format (8-byte header length, JSON header padded to 8, raw bytes),
    streamed tensor by tensor into a new file: safetensors' save_file writes by name."""
    if any(t.dtype not in ST_DTYPES for t in tensors.values()):
        fileguard.write_file(dir_fd, name, save(tensors, metadata={"format": "pt"}))
        return
    order = sorted(tensors, key=lambda k: (-_RANK[tensors[k].dtype], k))  # safetensors' own layout
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for k in order:
        t = tensors[k]
        n = t.numel() * t.element_size()
        header[k] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with os.fdopen(fileguard.new_file(dir_fd, name), "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for k in order:
            fh.write(tensors[k].contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _copy_side_file(src: Path, roots: Roots, dir_fd: int, name: str, config_dtype: str | None) -> None:
    try:
        fd = fileguard.open_file(src, roots, "side file")
    except FileNotFoundError:
        return
    except FileRefused as exc:
        raise PoolFileRefused(f"export: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        if name == "config.json" and config_dtype is not None:
            cfg = json.loads(fh.read())
            cfg["dtype"] = config_dtype
            cfg.pop("torch_dtype", None)
            fileguard.write_file(dir_fd, name, json.dumps(cfg, indent=2).encode())
            return
        with os.fdopen(fileguard.new_file(dir_fd, name), "wb") as dst:
            shutil.copyfileobj(fh, dst, 1 << 20)


def write_merge(
    pool: ResidentPool, spec: MergeSpec, out_dir: str | Path, *, out_dtype: str | None = None, progress: bool = False,
    out_roots: Roots = None, dtype: str | None = SEARCH,
) -> Path:
    """Merge and write to ``out_dir`` (missing or an empty folder; with ``out_roots``, inside
    them). Side files are copied only as regular files inside the pool's roots. ``dtype`` and
    ``out_dtype`` mean what they mean to mergekit (``dtype`` None: each tensor merged in its
    stored dtype); the default, SEARCH, merges as the search scored it. One cast at the end."""
    out = Path(out_dir)
    with fileguard.fresh_dir(out, out_roots, before_write) as dir_fd:
        _write_merge(pool, spec, dir_fd, out_dtype, dtype, progress)
    return out


def _dtypes(dtype: str | None, out_dtype: str | None, stored: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(the dtype one floating tensor is merged in, the dtype it is written in)."""
    if dtype == SEARCH:
        return fused.work_dtype(stored), DTYPES[out_dtype] if out_dtype else stored
    compute = DTYPES[dtype] if dtype else stored
    return compute, DTYPES[out_dtype] if out_dtype else compute


def _write_merge(pool: ResidentPool, spec: MergeSpec, dir_fd: int, out_dtype: str | None, dtype: str | None,
                 progress: bool) -> None:
    ref = pool.pool.reference
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in tqdm(pool.tensor_names, desc="merging", disable=not progress):
        stored = pool.stacks[name].dtype
        if stored.is_floating_point:
            compute, written = _dtypes(dtype, out_dtype, stored)
            t = pool.merged(spec, name, compute).to(written)  # the one rounding
        else:
            t = pool.merged(spec, name)
        t = t.to("cpu").contiguous()
        if size and size + t.numel() * t.element_size() > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * t.element_size()
    if len(shards) == 1:
        _write_safetensors(dir_fd, "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(dir_fd, fname, shard)
            weight_map.update(dict.fromkeys(shard, fname))
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())}, "weight_map": weight_map}
        fileguard.write_file(dir_fd, "model.safetensors.index.json", json.dumps(index, indent=2).encode())
    named = dtype if dtype != SEARCH else None
    for fname in SIDE_FILES:  # config.json says the dtype the way mergekit's does: out_dtype, else dtype
        _copy_side_file(ref.path / fname, ref.roots, dir_fd, fname, out_dtype or named)
    checkpoints = [(c.name, c.path) for c in pool.pool.checkpoints]
    base = pool.pool.base.path if pool.pool.base else None
    groups = pool.groups(spec.granularity)[0] if spec.granularity is not None else None
    if dtype == SEARCH:
        first = shards[0][next(iter(shards[0]))]
        floats = {pool.stacks[n].dtype for n in pool.tensor_names if pool.stacks[n].is_floating_point()}
        work = "float64" if floats == {torch.float64} else "float32"
        yml = to_mergekit_yaml(spec, checkpoints, base, out_dtype or _dtype_name(first), work, groups=groups)
    else:
        yml = to_mergekit_yaml(spec, checkpoints, base, out_dtype, dtype, groups=groups)
    fileguard.write_file(dir_fd, "mergekit_config.yml", yml.encode())
