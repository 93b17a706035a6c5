"""A suite's task YAMLs, read once and checked, are what lm-eval builds its tasks from.

Task YAMLs are code (Jinja templates, ``!function`` tags, ``class:`` tasks), they name files
(data, includes, caches), and the files of a task folder may change after it was registered. So
they are read here each time lm-eval is to use them (at registration, and by every worker right
before it builds the tasks), and lm-eval gets exactly the configs checked here: its TaskManager
is built over them and never reads a task file itself, so nothing changed or added after the
check is used.

Reading: every YAML lm-eval would index (``**/*.yaml`` under include_path) and every YAML its
``include:`` chain names, followed as lm-eval follows it; each opened through fileguard (resolved,
inside the roots, no link followed), at most MAX_YAML_BYTES, parsed from its bytes by lm-eval's
own loader class (a UTF-16 file reads as lm-eval reads it) under a budget on the nodes it expands
to and their depth (an alias bomb is refused before it is built).

Checks on each merged config, and on each inline task of a group:
- files: every ``dataset_kwargs.data_files`` pattern and every file `datasets` expands it to
  (globs, links), ``data_dir``, ``cache_dir`` and a local ``dataset_path`` folder (every file in
  it) lie under the roots; URLs and the options that send `datasets` elsewhere
  (storage_options, download_config, base_path) are refused.
- code: ``!function`` tags, ``class:`` tasks and metrics lm-eval does not register (HF evaluate
  loads those as code) only in YAMLs under a trusted task root, which the operator configures;
  there, functions are imported as lm-eval imports them, from modules under a trusted root.

A file that does not parse or is no task or group is left out, as lm-eval leaves it out: nothing
left out is used. ``roots=None`` (the CLI, run by the operator) skips the root comparisons."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from evaluators import fileguard, yaml_bounds
from evaluators.fileguard import FileRefused, Roots
from evaluators.staging import Staging, StagingError
from evaluators.suite_types import SuiteError

MAX_YAML_BYTES = 1 << 20  # a task YAML is a few kB
MAX_YAML_NODES = 100_000  # scalars, lists and mappings once every alias is expanded
MAX_YAML_DEPTH = 64
REDIRECTS = ("storage_options", "download_config", "base_path")  # where `datasets` looks, unchecked
TRUST_HINT = "MERGEOPT_TRUSTED_TASK_ROOTS"


class TaskFileRefused(SuiteError):
    """A task file that leads outside the allowed roots, or would run Python from outside the
    trusted task roots."""


@dataclass(frozen=True)
class FunctionRef:
    """A ``!function`` tag, not imported: its name and the (resolved) YAML it is written in."""

    name: str
    yaml: Path


class _Left(Exception):
    """A YAML lm-eval leaves out too (no YAML, no mapping, an include missing or cyclic)."""


def _check_budget(root: yaml.Node, path: Path) -> None:
    """Nodes, depth and characters of the document once aliases are expanded (yaml_bounds.py),
    counted on the composed graph before any object is built."""
    try:
        yaml_bounds.check_budget(root, MAX_YAML_NODES, MAX_YAML_DEPTH)
    except yaml_bounds.YamlTooLarge as exc:
        raise SuiteError(f"task file {path}: {exc}") from None


@functools.cache
def _loader_class() -> type:
    from lm_eval.tasks import _yaml_loader  # its loader: libyaml's CSafeLoader, else FullLoader

    class TaskLoader(_yaml_loader._Base):
        yaml_multi_constructors: dict = {}  # FullLoader's python/* tags build objects: not here
        yaml_path: Path

        def get_single_data(self):
            node = self.get_single_node()
            if node is None:
                return None
            _check_budget(node, self.yaml_path)
            return self.construct_document(node)

    TaskLoader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node), loader.yaml_path))
    return TaskLoader


def _parse(path: Path, roots: Roots, what: str) -> tuple[object, Path]:
    """One YAML: its bytes through fileguard, parsed; and its real path (the open file's)."""
    try:
        with fileguard.opened(path, roots, what) as fd:
            real = fileguard.fd_path(fd) or Path(os.path.realpath(path))
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(MAX_YAML_BYTES + 1)  # never more, however large the file
    except FileRefused as exc:
        raise TaskFileRefused(str(exc)) from exc
    except OSError as exc:
        raise _Left(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_YAML_BYTES:
        raise SuiteError(f"{what} {path} is larger than {MAX_YAML_BYTES} bytes")
    loader = _loader_class()(data)
    loader.yaml_path = real
    try:
        return loader.get_single_data(), real
    except yaml.YAMLError as exc:
        raise _Left(f"not valid YAML: {exc}".splitlines()[0]) from exc
    except RecursionError as exc:
        raise SuiteError(f"{what} {path}: nested too deeply") from exc
    finally:
        loader.dispose()


def _load(path: Path, roots: Roots, seen: set[Path], what: str = "task file") -> tuple[dict, Path]:
    """lm-eval's load_yaml (lm_eval/tasks/_yaml_loader.py) on checked reads: ``include:`` names
    YAMLs relative to the including one's real folder, merged in order, the file's own keys last;
    a file met twice is an include cycle."""
    cfg, real = _parse(path, roots, what)
    if real in seen:
        raise _Left(f"include cycle at {real}")
    seen.add(real)
    if not isinstance(cfg, dict):
        raise _Left(f"{real} is not a YAML mapping")
    if "include" not in cfg:
        return cfg, real
    includes = cfg.pop("include")
    merged: dict = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str):
            raise _Left(f"include {inc!r} is not a file name")
        sub, _ = _load(Path(inc) if Path(inc).is_absolute() else real.parent / inc, roots, seen,
                       f"{what} {path}: include")
        sub.pop("task_list", None)
        merged.update(sub)
    merged.update(cfg)
    return merged, real


# ------------------------------------------------------------------------------ the checks

def _leaves(value, kind: type, *, keys: bool = False) -> Iterator:
    """Every ``kind`` in a parsed YAML value: in lists, mapping values (and keys, with ``keys``)."""
    if isinstance(value, kind):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v, kind, keys=keys)
    elif isinstance(value, dict):
        for k, v in value.items():
            if keys:
                yield from _leaves(k, kind, keys=keys)
            yield from _leaves(v, kind, keys=keys)


def _strings(value) -> Iterator[str]:
    return _leaves(value, str)


def _configs(cfg: dict) -> Iterator[dict]:
    """The config and every inline task or group of its ``task:`` list (their keys reach tasks)."""
    yield cfg
    if isinstance(cfg.get("task"), list):
        for item in cfg["task"]:
            if isinstance(item, dict):
                yield from _configs(item)


def _inside(raw: str | Path, roots: Sequence[Path], where: str, what: str, target: str | None = None) -> Path:
    """The real path of ``target`` (default: ``raw``, as written), which must lie inside the roots."""
    real = Path(os.path.realpath(target or raw))
    if why := fileguard.refusal(real, roots):
        via = f" (resolves to {real})" if str(real) != str(raw) else ""
        raise TaskFileRefused(f"{where}: {what} '{raw}'{via} is {why.removeprefix('which is ')}")
    return real


def _local_dataset(path: str) -> bool:
    """A dataset_path is a builder ("json") or a Hub id ("org/name") unless it looks like a path
    or names something here (a folder is what `datasets` checks for first)."""
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path)


def _matches(pattern: str, base: str) -> list[str]:
    """The files `datasets` reads for one data_files pattern (its own resolver: globs, hidden files)."""
    from datasets.data_files import resolve_pattern

    try:
        return resolve_pattern(pattern, base_path=base)
    except (FileNotFoundError, ValueError):  # no match, or a pattern it refuses: it reads nothing
        return []


def _check_patterns(patterns: list[str], base: str | None, roots: Sequence[Path], where: str,
                    what: str = "dataset_kwargs.data_files") -> None:
    for p in patterns:
        if base is None and not os.path.isabs(p):
            continue  # a file of the Hub repository
        _inside(p, roots, where, what, target=os.path.join(base or "", p))
        found = _matches(p, base or "")
        if not found:  # not "nothing to check": a file may appear there (as a link) before it is read
            raise SuiteError(f"{where}: {what} '{p}' matches no file (it does not exist)")
        for f in found:
            real = Path(os.path.realpath(f))
            why = "outside the allowed roots" if "://" in f else fileguard.refusal(real, roots)
            if why:
                raise TaskFileRefused(f"{where}: {what} '{p}' matches {f}, which resolves to {real}, {why}")


def _check_local_folder(path: str, folder: Path, data_dir: str | None, data_files, roots: Sequence[Path],
                        where: str) -> None:
    """Every data file `datasets` finds for a local dataset folder: ``data_files``, else what it
    infers, and each config of the folder's README (patterns relative to the folder)."""
    from datasets.load import LocalDatasetModuleFactory

    try:
        module = LocalDatasetModuleFactory(path, data_dir=data_dir, data_files=data_files).get_module()
    except Exception as exc:  # by type: its text may quote the folder's README
        raise SuiteError(f"{where}: dataset_path '{path}' is not a dataset folder `datasets` can read "
                         f"({type(exc).__name__})") from exc
    configs = [(module.builder_kwargs.get("data_files"), data_dir)]
    configs += [(c.data_files, c.data_dir) for c in module.builder_configs_parameters.builder_configs or []]
    for files, sub in configs:
        if files:
            base = str(folder / sub) if sub else str(folder)
            _check_patterns(list(_strings({k: list(v) for k, v in files.items()})), base, roots, where,
                            f"data_files of dataset_path '{path}' (or its README)")


def _check_data(cfg: dict, roots: Sequence[Path], where: str) -> None:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), dict) else {}
    for key in REDIRECTS:
        if key in kwargs:
            raise TaskFileRefused(f"{where}: dataset_kwargs.{key} is not allowed (it sends `datasets` "
                                  "to files nobody checked)")
    path = cfg.get("dataset_path") if isinstance(cfg.get("dataset_path"), str) else None
    named = {"dataset_path": [path] if path else [],
             **{f"dataset_kwargs.{k}": list(_strings(kwargs.get(k))) for k in ("data_files", "data_dir", "cache_dir")}}
    for what, values in named.items():
        for v in values:
            if "://" in v or "::" in v:
                raise TaskFileRefused(f"{where}: {what} '{v}' is a URL: task data must be local files "
                                      "under the allowed roots")
    if isinstance(kwargs.get("cache_dir"), str):
        _inside(os.path.expanduser(kwargs["cache_dir"]), roots, where, "dataset_kwargs.cache_dir")
    data_dir = kwargs.get("data_dir") if isinstance(kwargs.get("data_dir"), str) else None
    data_files = kwargs.get("data_files")
    patterns = list(_strings(data_files))
    if path and path not in _PACKAGED_DATASETS_MODULES and _local_dataset(path):
        # A local dataset folder: `datasets` reads its README and data files, data_dir is inside it.
        folder = _inside(os.path.expanduser(path), roots, where, "dataset_path")
        if folder.is_dir():
            for entry in folder.rglob("*"):
                _inside(entry, roots, where, "file in dataset_path")
            base = str(folder / data_dir) if data_dir else str(folder)
            _inside(base, roots, where, "dataset_kwargs.data_dir")
            _check_patterns(patterns, base, roots, where)
            _check_local_folder(path, folder, data_dir, data_files, roots, where)
    elif path is None or path in _PACKAGED_DATASETS_MODULES:
        # A builder (json, csv...): patterns relative to data_dir, else to the working directory.
        base = str(_inside(os.path.expanduser(data_dir), roots, where, "dataset_kwargs.data_dir")) if data_dir \
            else os.getcwd()
        if path and data_files is None:  # the builder reads every data file it finds there
            from datasets.data_files import get_data_patterns

            _inside(base, roots, where, f"the folder dataset_path '{path}' without data_files reads")

            try:
                patterns = list(_strings({k: list(v) for k, v in get_data_patterns(base).items()}))
            except Exception:  # EmptyDatasetError: no data files there, nothing read
                patterns = []
        _check_patterns(patterns, base, roots, where)
    else:  # a Hub dataset: relative patterns are files of the repository, absolute ones are local
        _check_patterns(patterns, None, roots, where)


def _check_code(cfg: dict, real: Path, trusted: Sequence[Path]) -> None:
    shown = f"{TRUST_HINT}: {', '.join(str(t) for t in trusted)}" if trusted else f"{TRUST_HINT} is empty"
    tail = f"Python from task files runs only under the trusted task roots ({shown})"
    for ref in _leaves(cfg, FunctionRef, keys=True):  # the task's YAML and the one the tag is in (an include) both trusted
        for yml in (real, ref.yaml):
            if not fileguard.within(yml, trusted):
                raise TaskFileRefused(f"task file {yml}: '!function {ref.name}' runs Python; {tail}")
        module = _module_file(ref)
        if module.exists() and not fileguard.within(module, trusted):
            raise TaskFileRefused(f"task file {ref.yaml}: '!function {ref.name}' imports {module}; {tail}")
    if fileguard.within(real, trusted):
        return
    from lm_eval.api import metrics  # noqa: F401 (fills lm-eval's metric registry)
    from lm_eval.api.registry import metric_registry

    for conf in _configs(cfg):
        if "class" in conf:
            raise TaskFileRefused(f"task file {real}: 'class:' makes a Python task; {tail}")
        for m in conf.get("metric_list") if isinstance(conf.get("metric_list"), list) else []:
            if not isinstance(m, dict):
                continue
            name = m.get("metric")
            if m.get("hf_evaluate") is True:
                raise TaskFileRefused(f"task file {real}: metric '{name}' with hf_evaluate: HF evaluate loads "
                                      f"it as code; {tail}")
            if isinstance(name, str) and name not in metric_registry:
                raise TaskFileRefused(f"task file {real}: metric '{name}' is not one of lm-eval's (HF evaluate "
                                      f"would load it as code); {tail}")


def _module_file(ref: FunctionRef) -> Path:
    """Where lm-eval looks first for a ``!function`` module: beside the YAML (_import_func_in_yml)."""
    module, _, _ = ref.name.rpartition(".")
    return (ref.yaml.parent / f"{module.replace('.', '/')}.py").resolve()


def _import_functions(value):
    """The config with each ``!function`` imported as lm-eval imports it (only ever reached for
    YAMLs and modules under the trusted roots)."""
    if isinstance(value, FunctionRef):
        from lm_eval.tasks._yaml_loader import _import_func_in_yml

        try:
            return _import_func_in_yml(value.name, value.yaml.parent)
        except Exception as exc:  # ImportError, AttributeError, whatever the module raises
            raise SuiteError(f"task file {value.yaml}: '!function {value.name}': {exc}") from exc
    if isinstance(value, list):
        return [_import_functions(v) for v in value]
    if isinstance(value, dict):
        return {_import_functions(k): _import_functions(v) for k, v in value.items()}
    return value


def read_suite(include: Path, roots: Roots, trusted: Sequence[Path] = (), *, functions: bool = False,
               staging: Staging | None = None) -> tuple[dict[Path, dict], dict[Path, str]]:
    """Every YAML lm-eval would index under ``include``: the checked, merged config of each, and
    why each other one is left out. ``functions``: import the ``!function`` tags (to build the
    tasks; registration only checks them). ``staging`` (with ``roots``): the data files each
    config names are copied there and the config names the copies (task_data.py)."""
    from lm_eval.tasks._index import TaskIndex

    trusted = tuple(Path(os.path.realpath(t)) for t in trusted)
    configs: dict[Path, dict] = {}
    left: dict[Path, str] = {}
    for yml in TaskIndex._iter_yaml_files(include):  # lm-eval's own walk: **/*.yaml, sorted
        if any(part.startswith(".") for part in yml.relative_to(include).parts):
            left[yml] = "a hidden file (left out)"  # fileguard would refuse it: nothing left out is used
            continue
        try:
            cfg, real = _load(yml, roots, set())
        except _Left as exc:
            left[yml] = str(exc)
            continue
        if roots is not None:
            for conf in _configs(cfg):
                _check_data(conf, roots, f"task file {yml}")
        _check_code(cfg, real, trusted)
        if staging is not None and roots is not None:
            _stage(cfg, roots, staging, f"task file {yml}")
        configs[yml] = _import_functions(cfg) if functions else cfg
    return configs, left


def _stage(cfg: dict, roots: Sequence[Path], staging: Staging, where: str) -> None:
    from evaluators.task_data import stage_task_data

    try:
        for conf in _configs(cfg):
            stage_task_data(conf, roots, staging, where)
    except FileRefused as exc:
        raise TaskFileRefused(f"{where}: {exc}") from exc
    except StagingError as exc:
        raise SuiteError(str(exc)) from exc


@functools.cache
def _manager_class() -> type:
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind, TaskIndex

    class CheckedTaskManager(TaskManager):
        """lm-eval's TaskManager over configs read and checked here: its index holds them, with no
        file behind any entry, so lm-eval builds each task from its config and reads no YAML."""

        def __init__(self, configs: dict[Path, dict], left: dict[Path, str], include_defaults: bool = False) -> None:
            super().__init__(include_path=None, include_defaults=False)
            self.left = dict(left)
            index = self.task_index
            builtin = _builtin_index() if include_defaults else {}
            index.update(builtin)  # lm-eval's own entries (its installed files); the suite's override them
            for path, cfg in configs.items():
                try:
                    TaskIndex.process_cfg(cfg, path, index)
                except Exception as exc:  # neither a task nor a group: lm-eval skips it too
                    self.left[path] = f"neither a task nor a group ({type(exc).__name__})"  # no quoted content
            for name, entry in index.items():
                if builtin.get(name) is not entry:  # the suite's: built from its checked config
                    entry.yaml_path = None

        def _names(self, *kinds) -> list[str]:
            return sorted(n for n, e in self.task_index.items() if e.kind in kinds)

        @property
        def all_tasks(self) -> list[str]:
            return sorted(self.task_index)

        @property
        def all_subtasks(self) -> list[str]:
            return self._names(Kind.TASK, Kind.PY_TASK)

        @property
        def all_groups(self) -> list[str]:
            return self._names(Kind.GROUP)

        @property
        def all_tags(self) -> list[str]:
            return self._names(Kind.TAG)

    return CheckedTaskManager


def suite_manager(include: Path, roots: Roots, trusted: Sequence[Path] = (), *, functions: bool = False,
                  include_defaults: bool = False, staging: Staging | None = None):
    """lm-eval's TaskManager for the tasks under ``include``, built from their checked configs
    (and lm-eval's built-in tasks with ``include_defaults``); ``.left`` says which YAMLs were left
    out and why."""
    return _manager_class()(*read_suite(include, roots, trusted, functions=functions, staging=staging),
                            include_defaults)


@functools.cache
def builtin_manager():
    """lm-eval's TaskManager over its built-in tasks: scanning its ~10k YAMLs costs seconds of
    CPU, so once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=None, include_defaults=True)


def _builtin_index() -> dict:
    """A copy of the built-in index (its entries shared, never changed: a suite's own override
    them by name in the copy)."""
    return dict(builtin_manager().task_index)
