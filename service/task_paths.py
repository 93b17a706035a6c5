"""The files a suite's task YAMLs make lm-eval read must lie under the allowed roots too.

An include_path inside the roots is not enough: a task YAML there can name any file on the server
as its data (``dataset_kwargs.data_files``, a local ``dataset_path``, ``include:`` of another
YAML). Those are checked when the suite is registered. (Python named by ``!function`` tags is
imported from the include_path itself, so it is bounded by the include_path check.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from service.paths import guard_path


class _TaskLoader(yaml.SafeLoader):
    """lm-eval's YAML: ``!function module.name`` tags are code references, not data: skip them."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def _local(path: str) -> bool:
    """A dataset_path is a hub id or builder name ("json", "org/name") unless it looks like a
    path or names something that exists here (what `datasets` itself checks first)."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).exists()


def referenced_paths(config: dict) -> Iterator[str]:
    kwargs = config.get("dataset_kwargs")
    if isinstance(kwargs, dict):
        yield from _strings(kwargs.get("data_files"))
        yield from _strings(kwargs.get("data_dir"))
    path = config.get("dataset_path")
    if isinstance(path, str) and _local(path):
        yield path
    yield from _strings(config.get("include"))


def _candidates(raw: str, yaml_dir: Path) -> list[Path]:
    p = Path(raw).expanduser()
    if p.is_absolute():
        return [p]
    # Relative names are resolved by lm-eval (includes) against the YAML's folder and by
    # `datasets` (data files) against the working directory: both must stay inside.
    return [yaml_dir / p, Path.cwd() / p]


def guard_task_files(include: Path, roots: list[Path]) -> None:
    """Raise PathNotAllowed naming the YAML and the path when a task reads outside the roots."""
    for yml in sorted([*include.rglob("*.yaml"), *include.rglob("*.yml")]):
        real = guard_path(yml, roots, what="task file")
        try:
            config = yaml.load(real.read_text(errors="replace"), Loader=_TaskLoader)  # noqa: S506 (SafeLoader subclass)
        except yaml.YAMLError:
            continue  # lm-eval reports broken YAML itself, by task name
        if not isinstance(config, dict):
            continue
        for raw in referenced_paths(config):
            for candidate in _candidates(raw, real.parent):  # resolved: '..' and symlinks followed
                guard_path(candidate.resolve(), roots, what=f"task file {yml.name}: '{raw}'")
