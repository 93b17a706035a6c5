"""lm-eval internals mergeopt relies on, and nothing else touches: module-level names it replaces
(the template environment and renderer, the regex module of the extraction filters, progress
bars), HFLM's private scoring methods it overrides, and the task index and YAML loader it builds
task managers from. tests/test_adapters.py passes on lm-eval 0.4.12 and 0.4.13 (0.4.11 has no
lm_eval.tasks._index nor _yaml_loader); pyproject pins that range."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

# ------------------------------------------------------------------------------ templates


def template_environment():
    """The Jinja environment lm-eval renders task templates with.
    Relies on: ``lm_eval.utils.env``."""
    import lm_eval.utils as utils

    return utils.env


def route_template_rendering(env, apply_template: Callable[[str, dict], str]) -> None:
    """Every later render of a task template goes through ``apply_template`` (and ``env``).
    Relies on: lm-eval's tasks looking ``lm_eval.utils.apply_template`` (and ``utils.env``) up
    at each call (``utils.apply_template(...)`` in lm_eval/api/task.py), not binding them at import."""
    import lm_eval.utils as utils

    utils.env = env
    utils.apply_template = apply_template


def template_renderer() -> Callable[[str, dict], str]:
    """What lm-eval calls now to render a task template. Relies on: ``lm_eval.utils.apply_template``."""
    import lm_eval.utils as utils

    return utils.apply_template


def render_template(template: str, doc: dict) -> str:
    """A template rendered as lm-eval renders one. Relies on: ``lm_eval.utils.apply_template``."""
    return template_renderer()(template, doc)


# ------------------------------------------------------------------------------ module names


def replace_filter_regex_module(module) -> None:
    """lm-eval's extraction filters (regex, multi_choice_regex) compile and match with ``module``.
    Relies on: ``lm_eval.filters.extraction.re`` (the module-level ``import re`` they call)."""
    from lm_eval.filters import extraction

    extraction.re = module


def replace_progress_bars(factory: Callable[..., object]) -> None:
    """The progress bars of request building and HFLM's scoring come from ``factory``.
    Relies on: ``lm_eval.api.task.tqdm`` and ``lm_eval.models.huggingface.tqdm`` (module names:
    build_all_requests has no switch, loglikelihood_rolling forces disable_tqdm=False)."""
    import lm_eval.api.task as task_module
    import lm_eval.models.huggingface as hf_module

    task_module.tqdm = factory
    hf_module.tqdm = factory


# ------------------------------------------------------------------------------ task requests


def task_instances(task) -> list:
    """The requests ``build_all_requests(limit=, samples=)`` built. Relies on: ``Task._instances``."""
    return task._instances


def set_task_instances(task, instances: list) -> None:
    """Requests built earlier, restored. Relies on: ``Task._instances``."""
    task._instances = instances


# ------------------------------------------------------------------------------ HFLM


def study_hflm(score_tokens: Callable[[object, list], list | None]) -> type:
    """HFLM for a study: ``score_tokens(lm, requests)`` scores log-likelihood requests first (None:
    HFLM's own path), each (context, continuation) pair is tokenized once per instance, and no
    per-call progress bar. Relies on: ``HFLM._loglikelihood_tokens(requests, disable_tqdm=,
    override_bs=)`` with requests ``(request_str, context_enc, continuation_enc)``, and
    ``HFLM._encode_pair(context, continuation)``."""
    from lm_eval.models.huggingface import HFLM

    class StudyHFLM(HFLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            shared = score_tokens(self, requests)
            if shared is not None:
                return shared
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

        def _encode_pair(self, context, continuation):
            cache = encoded_pairs(self)
            key = (context, continuation)
            if key not in cache:
                cache[key] = super()._encode_pair(context, continuation)
            return cache[key]

        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)

    return StudyHFLM


def encoded_pairs(lm) -> dict:
    """(context, continuation) -> (context_enc, continuation_enc) a study_hflm instance has tokenized."""
    return lm.__dict__.setdefault("_mergeopt_pairs", {})


def encode_pair(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """HFLM's tokenization of one request. Relies on: ``HFLM._encode_pair(context, continuation)``."""
    return lm._encode_pair(context, continuation)


# ------------------------------------------------------------------------------ task YAMLs


def yaml_loader_base() -> type:
    """The PyYAML loader class lm-eval parses task YAMLs with (libyaml's CSafeLoader, else
    FullLoader). Relies on: ``lm_eval.tasks._yaml_loader._Base``."""
    from lm_eval.tasks import _yaml_loader

    return _yaml_loader._Base


def import_yaml_function(qualname: str, base_dir: Path):
    """A ``!function`` tag imported as lm-eval imports it (a module beside the YAML first).
    Relies on: ``lm_eval.tasks._yaml_loader._import_func_in_yml(qual, base_dir)``."""
    from lm_eval.tasks._yaml_loader import _import_func_in_yml

    return _import_func_in_yml(qualname, base_dir)


def task_yaml_files(include: Path) -> Iterator[Path]:
    """The YAMLs lm-eval indexes under a folder, in its order (``**/*.yaml``, sorted).
    Relies on: ``lm_eval.tasks._index.TaskIndex._iter_yaml_files(root)``."""
    from lm_eval.tasks._index import TaskIndex

    return TaskIndex._iter_yaml_files(include)


def index_task_config(cfg: dict, path: Path, index: dict) -> None:
    """Add a task, group or tag config to a TaskManager's index (raises if it is none of them).
    Relies on: ``lm_eval.tasks._index.TaskIndex.process_cfg(cfg, path, index_)``."""
    from lm_eval.tasks._index import TaskIndex

    TaskIndex.process_cfg(cfg, path, index)


def detach_from_file(entry) -> None:
    """An index entry lm-eval builds from its config, reading no YAML.
    Relies on: ``lm_eval.tasks._index.Entry.yaml_path`` (None: built from ``Entry.cfg``)."""
    entry.yaml_path = None


KIND_NAMES = {"subtask": ("TASK", "PY_TASK"), "group": ("GROUP",), "tag": ("TAG",)}


def names_of_kind(index: dict, kind: str) -> list[str]:
    """The sorted names of an index's entries of one kind: "subtask", "group" or "tag".
    Relies on: ``lm_eval.tasks._index.Kind`` and ``Entry.kind``."""
    from lm_eval.tasks._index import Kind

    kinds = {Kind[k] for k in KIND_NAMES[kind]}
    return sorted(n for n, e in index.items() if e.kind in kinds)


def registered_metrics():
    """The metric names lm-eval registers itself (others HF evaluate would load as code).
    Relies on: ``lm_eval.api.registry.metric_registry``, filled by importing ``lm_eval.api.metrics``."""
    from lm_eval.api import metrics  # noqa: F401 (fills the registry)
    from lm_eval.api.registry import metric_registry

    return metric_registry
