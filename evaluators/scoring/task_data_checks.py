"""The data a task config names, checked before `datasets` reads it (task_files.py reads the
configs, task_data.py stages what these checks passed): every ``dataset_kwargs.data_files``
pattern and every file `datasets` expands it to (globs, links), ``data_dir``, ``cache_dir`` and a
local ``dataset_path`` folder (every file in it) lie under the roots; URLs and the options that
send `datasets` elsewhere (storage_options, download_config, base_path) are refused. What
`datasets` reads is asked of `datasets` itself (adapters/datasets.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from evaluators.adapters import datasets as datasets_adapter
from evaluators.scoring.suite_types import SuiteError
from evaluators.security import fileguard

REDIRECTS = ("storage_options", "download_config", "base_path")  # where `datasets` looks, unchecked


class TaskFileRefused(SuiteError):
    """A task file that leads outside the allowed roots, or would run Python from outside the
    trusted task roots."""


def leaves(value, kind: type, *, keys: bool = False) -> Iterator:
    """Every ``kind`` in a parsed YAML value: in lists, mapping values (and keys, with ``keys``)."""
    if isinstance(value, kind):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from leaves(v, kind, keys=keys)
    elif isinstance(value, dict):
        for k, v in value.items():
            if keys:
                yield from leaves(k, kind, keys=keys)
            yield from leaves(v, kind, keys=keys)


def strings(value) -> Iterator[str]:
    return leaves(value, str)


def inside(raw: str | Path, roots: Sequence[Path], where: str, what: str, target: str | None = None) -> Path:
    """The real path of ``target`` (default: ``raw``, as written), which must lie inside the roots."""
    real = Path(os.path.realpath(target or raw))
    if why := fileguard.refusal(real, roots):
        via = f" (resolves to {real})" if str(real) != str(raw) else ""
        raise TaskFileRefused(f"{where}: {what} '{raw}'{via} is {why.removeprefix('which is ')}")
    return real


def local_dataset(path: str) -> bool:
    """A dataset_path is a builder ("json") or a Hub id ("org/name") unless it looks like a path
    or names something here (a folder is what `datasets` checks for first)."""
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path)


def check_patterns(patterns: list[str], base: str | None, roots: Sequence[Path], where: str,
                    what: str = "dataset_kwargs.data_files") -> None:
    for p in patterns:
        if base is None and not os.path.isabs(p):
            continue  # a file of the Hub repository
        inside(p, roots, where, what, target=os.path.join(base or "", p))
        found = datasets_adapter.matching_files(p, base or "")
        if not found:  # not "nothing to check": a file may appear there (as a link) before it is read
            raise SuiteError(f"{where}: {what} '{p}' matches no file (it does not exist)")
        for f in found:
            real = Path(os.path.realpath(f))
            why = "outside the allowed roots" if "://" in f else fileguard.refusal(real, roots)
            if why:
                raise TaskFileRefused(f"{where}: {what} '{p}' matches {f}, which resolves to {real}, {why}")


def check_local_folder(path: str, folder: Path, data_dir: str | None, data_files, roots: Sequence[Path],
                        where: str) -> None:
    """Every data file `datasets` finds for a local dataset folder: ``data_files``, else what it
    infers, and each config of the folder's README (patterns relative to the folder)."""
    try:
        configs = datasets_adapter.local_folder_configs(path, data_dir, data_files)
    except Exception as exc:  # by type: its text may quote the folder's README
        raise SuiteError(f"{where}: dataset_path '{path}' is not a dataset folder `datasets` can read "
                         f"({type(exc).__name__})") from exc
    for files, sub in configs:
        if files:
            base = str(folder / sub) if sub else str(folder)
            check_patterns(list(strings({k: list(v) for k, v in files.items()})), base, roots, where,
                            f"data_files of dataset_path '{path}' (or its README)")


def check_data(cfg: dict, roots: Sequence[Path], where: str) -> None:
    """The data one task config names lies under the roots (the module docstring)."""
    kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), dict) else {}
    for key in REDIRECTS:
        if key in kwargs:
            raise TaskFileRefused(f"{where}: dataset_kwargs.{key} is not allowed (it sends `datasets` "
                                  "to files nobody checked)")
    path = cfg.get("dataset_path") if isinstance(cfg.get("dataset_path"), str) else None
    named = {"dataset_path": [path] if path else [],
             **{f"dataset_kwargs.{k}": list(strings(kwargs.get(k))) for k in ("data_files", "data_dir", "cache_dir")}}
    for what, values in named.items():
        for v in values:
            if "://" in v or "::" in v:
                raise TaskFileRefused(f"{where}: {what} '{v}' is a URL: task data must be local files "
                                      "under the allowed roots")
    if isinstance(kwargs.get("cache_dir"), str):
        inside(os.path.expanduser(kwargs["cache_dir"]), roots, where, "dataset_kwargs.cache_dir")
    data_dir = kwargs.get("data_dir") if isinstance(kwargs.get("data_dir"), str) else None
    data_files = kwargs.get("data_files")
    patterns = list(strings(data_files))
    if path and not datasets_adapter.is_packaged_builder(path) and local_dataset(path):
        # A local dataset folder: `datasets` reads its README and data files, data_dir is inside it.
        folder = inside(os.path.expanduser(path), roots, where, "dataset_path")
        if folder.is_dir():
            for entry in folder.rglob("*"):
                inside(entry, roots, where, "file in dataset_path")
            base = str(folder / data_dir) if data_dir else str(folder)
            inside(base, roots, where, "dataset_kwargs.data_dir")
            check_patterns(patterns, base, roots, where)
            check_local_folder(path, folder, data_dir, data_files, roots, where)
    elif path is None or datasets_adapter.is_packaged_builder(path):
        # A builder (json, csv...): patterns relative to data_dir, else to the working directory.
        base = str(inside(os.path.expanduser(data_dir), roots, where, "dataset_kwargs.data_dir")) if data_dir \
            else os.getcwd()
        if path and data_files is None:  # the builder reads every data file it finds there
            inside(base, roots, where, f"the folder dataset_path '{path}' without data_files reads")
            patterns = list(strings(datasets_adapter.inferred_data_files(base)))  # None: nothing read
        check_patterns(patterns, base, roots, where)
    else:  # a Hub dataset: relative patterns are files of the repository, absolute ones are local
        check_patterns(patterns, None, roots, where)


