"""A pool member staged for transformers (staging.py): ``from_pretrained`` reads config.json,
generation_config.json and the tokenizer files from a private folder of copies made through
fileguard, and the weights through links to checked descriptors. The staged config.json must
be the one validate_pool checked: a file changed since is refused, not loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from evaluators.pool.validation import CheckpointInfo, PoolError, PoolFileRefused
from evaluators.security.fileguard import SIDE_FILES, FileRefused
from evaluators.security.staging import Staging, StagingError

# Every file transformers may open in a checkpoint folder besides the weights.
LIBRARY_FILES = tuple(dict.fromkeys((*SIDE_FILES, "vocab.txt", "model.safetensors.index.json")))


def stage_checkpoint(info: CheckpointInfo, staging: Staging) -> Path:
    """A folder holding ``info``'s library files as copies and its weight files as links to
    checked descriptors (valid until ``staging`` is closed)."""
    who = f"checkpoint '{info.name}'"
    folder = staging.folder(info.name)
    try:
        for name in LIBRARY_FILES:
            src = info.path / name
            if name != "config.json" and not os.path.lexists(src):
                continue  # optional, and absent: transformers finds none in the copy either
            try:
                staging.copy(src, info.roots, folder / name, name)
            except StagingError:
                if name == "config.json" or os.path.lexists(src) and not os.path.islink(src):
                    raise
                # a dangling link inside the roots: nothing to read (as _check_side_files says)
        for file in sorted({t.file for t in info.tensors.values()}):
            staging.link(file, info.roots, folder / file.name, "file")
    except FileRefused as exc:
        raise PoolFileRefused(f"{who}: {exc}") from exc
    except (StagingError, OSError) as exc:
        raise PoolError(f"{who}: cannot stage its files: {exc}") from exc
    try:
        staged = json.loads((folder / "config.json").read_bytes())
    except (ValueError, RecursionError) as exc:
        raise PoolError(f"{who}: config.json is no longer valid JSON") from exc
    if staged != info.config:
        raise PoolError(f"{who}: config.json changed since the pool was validated")
    return folder
