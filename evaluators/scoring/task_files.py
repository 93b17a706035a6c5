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
- files (task_data_checks.py): every ``dataset_kwargs.data_files`` pattern and every file `datasets` expands it to
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

from evaluators.adapters import lm_eval as lm_eval_adapter
from evaluators.scoring.suite_types import SuiteError
from evaluators.scoring.task_data import stage_task_data
from evaluators.scoring.task_data_checks import TaskFileRefused, check_data, leaves
from evaluators.security import fileguard, yaml_bounds
from evaluators.security.fileguard import FileRefused, Roots
from evaluators.security.staging import Staging, StagingError

MAX_YAML_BYTES = 1 << 20  # a task YAML is a few kB
MAX_YAML_NODES = 100_000  # scalars, lists and mappings once every alias is expanded
MAX_YAML_DEPTH = 64
TRUST_HINT = "MERGEOPT_TRUSTED_TASK_ROOTS"


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
    class TaskLoader(lm_eval_adapter.yaml_loader_base()):  # libyaml's CSafeLoader, else FullLoader
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


def _configs(cfg: dict) -> Iterator[dict]:
    """The config and every inline task or group of its ``task:`` list (their keys reach tasks)."""
    yield cfg
    if isinstance(cfg.get("task"), list):
        for item in cfg["task"]:
            if isinstance(item, dict):
                yield from _configs(item)


def _check_code(cfg: dict, real: Path, trusted: Sequence[Path]) -> None:
    shown = f"{TRUST_HINT}: {', '.join(str(t) for t in trusted)}" if trusted else f"{TRUST_HINT} is empty"
    tail = f"Python from task files runs only under the trusted task roots ({shown})"
    for ref in leaves(cfg, FunctionRef, keys=True):  # the task's YAML and the one the tag is in (an include) both trusted
        for yml in (real, ref.yaml):
            if not fileguard.within(yml, trusted):
                raise TaskFileRefused(f"task file {yml}: '!function {ref.name}' runs Python; {tail}")
        module = _module_file(ref)
        if module.exists() and not fileguard.within(module, trusted):
            raise TaskFileRefused(f"task file {ref.yaml}: '!function {ref.name}' imports {module}; {tail}")
    if fileguard.within(real, trusted):
        return
    metric_registry = lm_eval_adapter.registered_metrics()
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
        try:
            return lm_eval_adapter.import_yaml_function(value.name, value.yaml.parent)
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
    trusted = tuple(Path(os.path.realpath(t)) for t in trusted)
    configs: dict[Path, dict] = {}
    left: dict[Path, str] = {}
    for yml in lm_eval_adapter.task_yaml_files(include):  # lm-eval's own walk: **/*.yaml, sorted
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
                check_data(conf, roots, f"task file {yml}")
        _check_code(cfg, real, trusted)
        if staging is not None and roots is not None:
            _stage(cfg, roots, staging, f"task file {yml}")
        configs[yml] = _import_functions(cfg) if functions else cfg
    return configs, left


def _stage(cfg: dict, roots: Sequence[Path], staging: Staging, where: str) -> None:
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
                    lm_eval_adapter.index_task_config(cfg, path, index)
                except Exception as exc:  # neither a task nor a group: lm-eval skips it too
                    self.left[path] = f"neither a task nor a group ({type(exc).__name__})"  # no quoted content
            for name, entry in index.items():
                if builtin.get(name) is not entry:  # the suite's: built from its checked config
                    lm_eval_adapter.detach_from_file(entry)

        @property
        def all_tasks(self) -> list[str]:
            return sorted(self.task_index)

        @property
        def all_subtasks(self) -> list[str]:
            return lm_eval_adapter.names_of_kind(self.task_index, "subtask")

        @property
        def all_groups(self) -> list[str]:
            return lm_eval_adapter.names_of_kind(self.task_index, "group")

        @property
        def all_tags(self) -> list[str]:
            return lm_eval_adapter.names_of_kind(self.task_index, "tag")

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
