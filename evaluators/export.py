"""Writing a merge as a Hugging Face checkpoint (safetensors in the pool's own tensor layout,
config, tokenizer) plus the mergekit config that reproduces it. Used by `mergeopt merge` and
`mergeopt export`; never on the per-trial path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from evaluators.merge_spec import MergeSpec
from evaluators.mergekit_yaml import to_mergekit_yaml
from evaluators.resident import ResidentPool

SHARD_BYTES = 4 * 1024**3
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# Files that travel with the weights so the folder loads on its own.
SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",
)


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def write_merge(
    pool: ResidentPool, spec: MergeSpec, out_dir: str | Path, *, out_dtype: str | None = None, progress: bool = False
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = pool.pool.reference
    target = DTYPES[out_dtype] if out_dtype else None
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in tqdm(pool.tensor_names, desc="merging", disable=not progress):
        t = pool.merged(spec, name)
        t = (t.to(target) if target is not None and t.is_floating_point() else t).to("cpu").contiguous()
        if size and size + t.numel() * t.element_size() > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * t.element_size()
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for fname in SIDE_FILES:
        src = ref.path / fname
        if src.exists():
            shutil.copyfile(src, out / fname)
    if target is not None:
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["dtype"] = out_dtype
        cfg.pop("torch_dtype", None)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    first = shards[0][next(iter(shards[0]))]
    checkpoints = [(c.name, c.path) for c in pool.pool.checkpoints]
    base = pool.pool.base.path if pool.pool.base else None
    (out / "mergekit_config.yml").write_text(to_mergekit_yaml(spec, checkpoints, base, out_dtype or _dtype_name(first)))
    return out
