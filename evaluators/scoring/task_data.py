"""Task data staged for `datasets` (staging.py): after a task config passed task_files' checks,
every local file it names is copied through fileguard into the study's staging folder and the
config is rewritten to name only the copies, so `datasets` never opens a client path.

- a builder (json, text, csv...): each data_files pattern expands (as `datasets` expands it) to
  files that are staged one by one; without data_files, the files the builder would find in
  data_dir (else the working directory); data_dir is then dropped;
- a local dataset folder: its regular files are staged as a folder (hidden names, which
  `datasets` skips, are left out) and dataset_path names the copy; its patterns are checked
  again against the copy (a ``../`` pattern must not lead out of it);
- a Hub dataset: only absolute (local) patterns; the Hub's own files come from the operator's cache.

``cache_dir`` becomes a folder inside the staging folder: no cache a client placed is read."""

from __future__ import annotations

import os
from pathlib import Path

from evaluators.adapters import datasets as datasets_adapter
from evaluators.scoring.task_data_checks import check_local_folder, local_dataset
from evaluators.security.fileguard import Roots
from evaluators.security.staging import Staging, StagingError

DATA_KEYS = ("dataset_path", "dataset_kwargs")


def _rewrite(value, stage_one):
    """``value`` (a data_files str, list or mapping) with each pattern replaced by staged files."""
    if isinstance(value, str):
        return stage_one(value)
    if isinstance(value, list | tuple):
        out: list = []
        for v in value:
            staged = _rewrite(v, stage_one)
            out.extend(staged) if isinstance(v, str) else out.append(staged)
        return out
    if isinstance(value, dict):
        return {k: v if k == "split" else _rewrite(v, stage_one) for k, v in value.items()}
    return value


def _stager(staging: Staging, roots: Roots, where: str, base: str | None, what: str):
    folder = staging.folder("data")

    def stage_one(pattern: str) -> list[str]:
        if base is None and not os.path.isabs(pattern):
            return [pattern]  # a file of the Hub repository
        matches = datasets_adapter.matching_files(pattern, base or "")
        if not matches:
            raise StagingError(f"{where}: {what} '{pattern}' matches no file (it does not exist)")
        out = []
        for f in matches:
            dest = folder / f"{staging.files}-{Path(f).name[-100:]}"
            out.append(str(staging.copy(f, roots, dest, f"{where}: data file")))
        return out

    return stage_one


def _stage_folder(src: Path, staging: Staging, roots: Roots, where: str) -> Path:
    copy = staging.folder("dataset")
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(dirpath).relative_to(src)
        for name in sorted(f for f in files if not f.startswith(".")):
            staging.copy(Path(dirpath) / name, roots, copy / rel / name, f"{where}: file in dataset_path")
    return copy


def stage_task_data(cfg: dict, roots: Roots, staging: Staging, where: str) -> None:
    """Rewrite ``cfg`` (checked already) in place to name staged copies only."""
    if not any(k in cfg for k in DATA_KEYS):
        return  # a group, or a task of lm-eval's own
    kwargs = dict(cfg["dataset_kwargs"]) if isinstance(cfg.get("dataset_kwargs"), dict) else {}
    path = cfg.get("dataset_path") if isinstance(cfg.get("dataset_path"), str) else None
    data_dir = kwargs.get("data_dir") if isinstance(kwargs.get("data_dir"), str) else None
    data_files = kwargs.get("data_files")
    what = "dataset_kwargs.data_files"
    if path and not datasets_adapter.is_packaged_builder(path) and local_dataset(path):
        src = Path(os.path.realpath(os.path.expanduser(path)))
        if src.is_dir():
            copy = _stage_folder(src, staging, roots, where)
        elif src.exists():
            copy = staging.copy(src, roots, staging.folder("dataset") / src.name, f"{where}: dataset_path")
        else:
            raise StagingError(f"{where}: dataset_path '{path}' does not exist")
        cfg["dataset_path"] = str(copy)
        if data_files is not None:  # absolute patterns staged; relative ones resolve inside the copy
            stage_abs = _stager(staging, roots, where, None, what)
            kwargs["data_files"] = _rewrite(data_files, lambda p: stage_abs(p) if os.path.isabs(p) else [p])
        if copy.is_dir():
            check_local_folder(str(copy), copy, data_dir, kwargs.get("data_files"), [staging.root], where)
    elif path is None or datasets_adapter.is_packaged_builder(path):
        base = os.path.expanduser(data_dir) if data_dir else os.getcwd()
        if path and data_files is None:  # None: no data files there, the builder reads nothing
            data_files = datasets_adapter.inferred_data_files(base)
        if data_files is not None:
            kwargs["data_files"] = _rewrite(data_files, _stager(staging, roots, where, base, what))
        kwargs.pop("data_dir", None)
    elif data_files is not None:
        kwargs["data_files"] = _rewrite(data_files, _stager(staging, roots, where, None, what))
    kwargs["cache_dir"] = str(staging.root / "datasets-cache")
    cfg["dataset_kwargs"] = kwargs
