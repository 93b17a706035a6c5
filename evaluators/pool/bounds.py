"""Bounds on what a pool's files may make us do, checked before anything is built (registration
runs in the API process: a config.json with ``num_hidden_layers: 20000`` made transformers build
20000 layers on the meta device, 17 s and +756 MB; an 85 MB safetensors header took 10 s and
+1 GB, times 128 checkpoints). Each check returns why it refuses, or None; pool.py raises.

- Module counts in config.json (layers, experts; nested configs too) may not exceed what the
  tensors hold: 1 + the largest index in a tensor name (each layer and expert has tensors).
- A safetensors header is at most MAX_HEADER_BYTES, and a pool's headers together at most
  MAX_POOL_HEADER_BYTES (a 7B model's header is ~50 kB).
- ``attn_implementation`` may only name an implementation transformers ships (a Hub kernel
  name makes it download and run code).
- One folder is one checkpoint: paths are compared after every link is resolved."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

MAX_HEADER_BYTES = 16 << 20
MAX_POOL_HEADER_BYTES = 64 << 20
COUNT_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_decoder_layers", "num_encoder_layers",
              "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
ATTN_KEYS = ("attn_implementation", "_attn_implementation")
SHIPPED_ATTENTION = (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_INDEX = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")


def _configs(config: dict, where: str = "config.json") -> Iterator[tuple[str, dict]]:
    yield where, config
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _configs(value, f"{where} {key}")


def count_refusal(config: dict, tensor_names: list[str]) -> str | None:
    """A module count in ``config`` beyond what the tensors hold."""
    indices = [int(m) for name in tensor_names for m in _INDEX.findall(name)]
    most = max(indices) + 1 if indices else len(tensor_names)
    for where, conf in _configs(config):
        for key in COUNT_KEYS:
            value = conf.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > most:
                return (f"{where}: {key} is {value}, but its tensors hold at most {most} (the largest index in "
                        "a tensor name, plus one)")
    return None


def attention_refusal(config: dict) -> str | None:
    for where, conf in _configs(config):
        for key in ATTN_KEYS:
            if key in conf and conf[key] not in SHIPPED_ATTENTION:
                shipped = ", ".join(a for a in SHIPPED_ATTENTION if a)
                return f"{where}: {key} must be one of {shipped} (or absent): others load code from the Hub"
    return None


class HeaderBudget:
    """The bytes of safetensors headers one validation may read."""

    def __init__(self, total: int | None = None) -> None:
        self.left = MAX_POOL_HEADER_BYTES if total is None else total

    def take(self, n: int) -> str | None:
        if n > MAX_HEADER_BYTES:
            return f"its safetensors header is {n} bytes, more than {MAX_HEADER_BYTES}"
        if n > self.left:
            return f"the pool's safetensors headers exceed {MAX_POOL_HEADER_BYTES} bytes in all"
        self.left -= n
        return None


def duplicate_refusal(members: list[tuple[str, str | Path]]) -> str | None:
    """Two members that are one folder (after links, '..', '~')."""
    seen: dict[str, str] = {}
    for name, path in members:
        real = os.path.realpath(os.path.expanduser(str(path)))
        if real in seen:
            return f"checkpoints '{seen[real]}' and '{name}' are the same folder ({real})"
        seen[real] = name
    return None
