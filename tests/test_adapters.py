"""Every private thing of another project the adapters rely on (evaluators/adapters/,
optimizer/adapters/): each symbol exists, with the parameters the adapter passes by name. An
upgrade that moves one fails here, with the symbol's name as the test id, rather than somewhere
in a study; and no module outside the adapters touches them. (The sandbox the lm-eval adapter
installs: test_sandbox_install.py.)"""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import jinja2
import numpy as np
import optuna
import pytest
import torch

from evaluators.adapters import datasets as datasets_adapter
from evaluators.adapters import lm_eval as lm_eval_adapter
from evaluators.adapters import transformers as transformers_adapter
from optimizer.adapters import optuna as optuna_adapter

REPO = Path(__file__).resolve().parents[1]


def takes(fn, *names: str) -> None:
    """``fn`` is callable and accepts each of ``names`` as a parameter."""
    assert callable(fn), fn
    params = inspect.signature(fn).parameters
    missing = [n for n in names if n not in params]
    assert not missing, f"{getattr(fn, '__qualname__', fn)} lost parameter(s) {missing}: has {list(params)}"


def has_attr(obj, name: str) -> None:
    assert hasattr(obj, name), f"{getattr(obj, '__name__', obj)} has no {name}"


# ------------------------------------------------------------------------------ lm-eval

def _lm_eval_utils():
    import lm_eval.utils as utils

    return utils


def check_utils_env():
    assert isinstance(_lm_eval_utils().env, jinja2.Environment)


def check_utils_apply_template():
    takes(_lm_eval_utils().apply_template, "template", "doc")


def check_tasks_look_apply_template_up_per_call():
    # Replacing utils.apply_template reaches the tasks only if they call it through the module.
    import lm_eval.api.task as task_module

    source = inspect.getsource(task_module)
    assert "utils.apply_template(" in source
    assert "from lm_eval.utils import apply_template" not in source


def check_extraction_re():
    from lm_eval.filters import extraction

    has_attr(extraction, "re")
    assert "re.compile(" in inspect.getsource(extraction.RegexFilter)


def check_progress_bar_names():
    import lm_eval.api.task as task_module
    import lm_eval.models.huggingface as hf_module

    has_attr(task_module, "tqdm")
    has_attr(hf_module, "tqdm")


def check_task_instances():
    from lm_eval.api.task import Task

    assert "self._instances" in inspect.getsource(Task.__init__)
    takes(Task.build_all_requests, "limit", "samples")


def check_hflm_loglikelihood_tokens():
    from lm_eval.models.huggingface import HFLM

    takes(HFLM._loglikelihood_tokens, "requests", "disable_tqdm", "override_bs")


def check_hflm_encode_pair():
    from lm_eval.models.huggingface import HFLM

    takes(HFLM._encode_pair, "context", "continuation")
    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        takes(getattr(HFLM, name), "requests", "disable_tqdm")


def check_yaml_loader_base():
    import yaml
    from lm_eval.tasks import _yaml_loader

    assert issubclass(_yaml_loader._Base, yaml.SafeLoader | yaml.FullLoader | yaml.CSafeLoader)
    assert lm_eval_adapter.yaml_loader_base() is _yaml_loader._Base


def check_import_func_in_yml():
    from lm_eval.tasks._yaml_loader import _import_func_in_yml

    takes(_import_func_in_yml, "qual", "base_dir")


def check_task_index_iter_yaml_files(tmp_path):
    from lm_eval.tasks._index import TaskIndex

    takes(TaskIndex._iter_yaml_files, "root")
    (tmp_path / "b.yaml").write_text("task: b\n")
    (tmp_path / "a.yaml").write_text("task: a\n")
    assert [p.name for p in lm_eval_adapter.task_yaml_files(tmp_path)] == ["a.yaml", "b.yaml"]


def check_task_index_process_cfg():
    from lm_eval.tasks._index import TaskIndex

    takes(TaskIndex.process_cfg, "cfg", "path", "index_")


def check_index_kinds_and_entries(tmp_path):
    from lm_eval.tasks._index import Entry, Kind

    for name in ("TASK", "PY_TASK", "GROUP", "TAG"):
        has_attr(Kind, name)
    fields = {f for f in inspect.signature(Entry).parameters}
    assert {"name", "kind", "yaml_path", "cfg"} <= fields
    index: dict = {}
    lm_eval_adapter.index_task_config({"task": "t1", "tag": "tg", "dataset_path": "json"}, tmp_path / "t1.yaml", index)
    lm_eval_adapter.index_task_config({"group": "g1", "task": ["t1"]}, tmp_path / "g1.yaml", index)
    assert lm_eval_adapter.names_of_kind(index, "subtask") == ["t1"]
    assert lm_eval_adapter.names_of_kind(index, "group") == ["g1"]
    assert lm_eval_adapter.names_of_kind(index, "tag") == ["tg"]
    lm_eval_adapter.detach_from_file(index["t1"])
    assert index["t1"].yaml_path is None and index["t1"].cfg["task"] == "t1"


def check_task_manager():
    from lm_eval.tasks import TaskManager

    takes(TaskManager.__init__, "include_path", "include_defaults")
    assert isinstance(inspect.getattr_static(TaskManager, "task_index"), property)


def check_metric_registry():
    assert "acc" in lm_eval_adapter.registered_metrics()


def check_evaluate_and_get_task_dict():
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import get_task_dict

    takes(evaluate, "samples", "bootstrap_iters", "log_samples")
    takes(get_task_dict, "task_name_list", "task_manager")


def check_hflm_attributes_prefix_scoring_reads():
    from lm_eval.models.huggingface import HFLM

    source = inspect.getsource(HFLM)
    for name in ("softmax_dtype", "mixed_precision_dtype", "backend"):
        assert f"self.{name} =" in source, f"HFLM sets no {name}"
    for name in ("batch_size", "max_length", "device", "model"):
        has_attr(HFLM, name)


LM_EVAL = {
    "lm_eval.utils.env": check_utils_env,
    "lm_eval.utils.apply_template": check_utils_apply_template,
    "lm_eval.api.task looks utils.apply_template up per call": check_tasks_look_apply_template_up_per_call,
    "lm_eval.filters.extraction.re": check_extraction_re,
    "lm_eval.api.task.tqdm, lm_eval.models.huggingface.tqdm": check_progress_bar_names,
    "Task._instances, Task.build_all_requests": check_task_instances,
    "HFLM._loglikelihood_tokens": check_hflm_loglikelihood_tokens,
    "HFLM._encode_pair": check_hflm_encode_pair,
    "HFLM attributes prefix_scoring.py reads": check_hflm_attributes_prefix_scoring_reads,
    "lm_eval.tasks._yaml_loader._Base": check_yaml_loader_base,
    "lm_eval.tasks._yaml_loader._import_func_in_yml": check_import_func_in_yml,
    "TaskIndex._iter_yaml_files": check_task_index_iter_yaml_files,
    "TaskIndex.process_cfg": check_task_index_process_cfg,
    "lm_eval.tasks._index.Kind, Entry": check_index_kinds_and_entries,
    "TaskManager.task_index": check_task_manager,
    "lm_eval.api.registry.metric_registry": check_metric_registry,
    "lm_eval.evaluator.evaluate, get_task_dict": check_evaluate_and_get_task_dict,
}


@pytest.mark.parametrize("symbol", list(LM_EVAL))
def test_lm_eval(symbol, tmp_path):
    check = LM_EVAL[symbol]
    check(tmp_path) if "tmp_path" in inspect.signature(check).parameters else check()


# ------------------------------------------------------------------------------ datasets

def check_packaged_modules():
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    assert {"json", "csv", "text"} <= set(_PACKAGED_DATASETS_MODULES)
    assert datasets_adapter.is_packaged_builder("json") and not datasets_adapter.is_packaged_builder("org/name")


def check_resolve_pattern(tmp_path):
    from datasets.data_files import resolve_pattern

    takes(resolve_pattern, "pattern", "base_path")
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert [Path(f).name for f in datasets_adapter.matching_files("*.jsonl", str(tmp_path))] == ["a.jsonl"]
    assert datasets_adapter.matching_files("none-*.jsonl", str(tmp_path)) == []


def check_get_data_patterns(tmp_path):
    from datasets.data_files import get_data_patterns

    takes(get_data_patterns, "base_path")
    (tmp_path / "train.jsonl").write_text("{}\n")
    assert "train" in datasets_adapter.inferred_data_files(str(tmp_path))
    assert datasets_adapter.inferred_data_files(str(tmp_path / "empty")) is None


def check_local_dataset_module_factory(tmp_path):
    from datasets.load import BuilderConfigsParameters, LocalDatasetModuleFactory

    takes(LocalDatasetModuleFactory.__init__, "path", "data_dir", "data_files")
    has_attr(LocalDatasetModuleFactory, "get_module")
    has_attr(BuilderConfigsParameters(), "builder_configs")
    (tmp_path / "train.jsonl").write_text(json.dumps({"q": 1}) + "\n")
    found = [(str(split), [Path(f).name for f in files], data_dir)
             for files, data_dir in datasets_adapter.local_folder_configs(str(tmp_path), None, None) if files
             for split, files in files.items()]
    assert found == [("train", ["train.jsonl"], None)]  # inferred: the README-less default config


DATASETS = {
    "datasets.packaged_modules._PACKAGED_DATASETS_MODULES": check_packaged_modules,
    "datasets.data_files.resolve_pattern": check_resolve_pattern,
    "datasets.data_files.get_data_patterns": check_get_data_patterns,
    "datasets.load.LocalDatasetModuleFactory": check_local_dataset_module_factory,
}


@pytest.mark.parametrize("symbol", list(DATASETS))
def test_datasets(symbol, tmp_path):
    check = DATASETS[symbol]
    check(tmp_path) if "tmp_path" in inspect.signature(check).parameters else check()


# ------------------------------------------------------------------------------ transformers

def check_attn_implementation():
    from transformers import LlamaConfig

    config = LlamaConfig(attn_implementation="eager")
    has_attr(config, "_attn_implementation")
    assert transformers_adapter.attention_implementation(config) == "eager"


def check_dynamic_cache():
    from transformers.cache_utils import DynamicCache, DynamicLayer  # noqa: F401 (the import is the check)

    takes(DynamicCache.__init__, "ddp_cache_data")
    keys, values = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    cache = transformers_adapter.dynamic_cache([(keys, values)])
    layers = transformers_adapter.full_attention_layers(cache)
    assert layers is not None and torch.equal(layers[0][0], keys) and torch.equal(layers[0][1], values)
    assert transformers_adapter.full_attention_layers(object()) is None


def check_keys_to_ignore_on_load_missing():
    from transformers import PreTrainedModel

    has_attr(PreTrainedModel, "_keys_to_ignore_on_load_missing")


TRANSFORMERS = {
    "PretrainedConfig._attn_implementation": check_attn_implementation,
    "transformers.cache_utils.DynamicCache, DynamicLayer": check_dynamic_cache,
    "PreTrainedModel._keys_to_ignore_on_load_missing": check_keys_to_ignore_on_load_missing,
}


@pytest.mark.parametrize("symbol", list(TRANSFORMERS))
def test_transformers(symbol):
    TRANSFORMERS[symbol]()


# ------------------------------------------------------------------------------ Optuna

def _study(storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage or optuna.storages.RDBStorage("sqlite:///:memory:"))


def check_compute_hypervolume():
    from optuna._hypervolume import compute_hypervolume

    takes(compute_hypervolume, "loss_vals", "reference_point")
    assert optuna_adapter.hypervolume(np.array([[-1.0, -1.0]]), np.array([0.0, 0.0])) == pytest.approx(1.0)


def check_trial_heartbeat_model():
    from optuna.storages._rdb.models import TrialHeartbeatModel

    has_attr(TrialHeartbeatModel, "trial_id")
    storage = optuna.storages.RDBStorage("sqlite:///:memory:", heartbeat_interval=60)
    has_attr(storage, "scoped_session")
    study = _study(storage)
    quiet, beating = study.ask(), study.ask()
    storage.record_heartbeat(optuna_adapter.trial_id(beating))
    ids = [optuna_adapter.trial_id(t) for t in (quiet, beating)]
    assert optuna_adapter.trials_with_heartbeat(storage, ids) == {optuna_adapter.trial_id(beating)}


def check_trial_id():
    study = _study()
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    assert optuna_adapter.trial_id(trial) == optuna_adapter.trial_id(frozen) == frozen._trial_id


def check_study_internals():
    from optuna.study import Study

    takes(Study._get_trials, "deepcopy", "use_cache")
    study = _study()
    trial = study.ask()
    optuna_adapter.set_trial_system_attr(study, trial, "k", 1)
    assert [t.system_attrs["k"] for t in optuna_adapter.cached_trials(study)] == [1]


def check_cmaes_internals():
    from optuna.samplers import CmaEsSampler

    sampler = CmaEsSampler(seed=0, popsize=5, warn_independent_sampling=False)
    for name in ("_attr_prefix", "_popsize", "_x0", "_sigma0"):
        has_attr(sampler, name)
    assert isinstance(inspect.getattr_static(CmaEsSampler, "_attr_key_generation"), property)
    takes(CmaEsSampler._get_trials, "study")
    takes(CmaEsSampler._restore_optimizer, "completed_trials")
    optuna_adapter.set_cma_run(sampler, attr_prefix="cma:r1:", popsize=10, x0={"x": 0.5}, sigma0=0.2)
    assert optuna_adapter.cma_popsize(sampler) == 10
    assert optuna_adapter.cma_generation_key(sampler) == "cma:r1:generation"
    study = _study()
    assert optuna_adapter.cma_complete_trials(sampler, study) == []
    assert optuna_adapter.cma_restored_optimizer(sampler, []) is None


OPTUNA = {
    "optuna._hypervolume.compute_hypervolume": check_compute_hypervolume,
    "optuna.storages._rdb.models.TrialHeartbeatModel": check_trial_heartbeat_model,
    "Trial._trial_id, FrozenTrial._trial_id": check_trial_id,
    "Study._get_trials, Study._storage": check_study_internals,
    "CmaEsSampler._attr_prefix/_popsize/_x0/_sigma0/_get_trials/_restore_optimizer": check_cmaes_internals,
}


@pytest.mark.parametrize("symbol", list(OPTUNA))
def test_optuna(symbol):
    OPTUNA[symbol]()


# Private names of these projects, as attributes, names or imported names.
PRIVATE_NAMES = {
    "_trial_id", "_get_trials", "_restore_optimizer", "_popsize", "_x0", "_sigma0", "_attr_prefix",
    "_attr_key_generation", "_attn_implementation", "_keys_to_ignore_on_load_missing", "_loglikelihood_tokens",
    "_encode_pair", "_instances", "_iter_yaml_files", "_PACKAGED_DATASETS_MODULES", "_Base",
    "_import_func_in_yml", "_yaml_loader", "_index", "_hypervolume", "_rdb", "DynamicLayer", "TrialHeartbeatModel",
}
# Modules whose module-level names the lm-eval adapter replaces (utils.env, extraction.re, tqdm).
REPLACED_IN = {"lm_eval.utils", "lm_eval.api.task", "lm_eval.models.huggingface", "lm_eval.filters.extraction"}


def _private_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            yield node.lineno, f".{node.attr}"
        elif isinstance(node, ast.Attribute) and node.attr == "_storage" and not (
                isinstance(node.value, ast.Name) and node.value.id == "self"):
            yield node.lineno, "._storage"
        elif isinstance(node, ast.Name) and node.id in PRIVATE_NAMES:
            yield node.lineno, node.id
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, f"import {a.name}") for a in node.names if a.name in REPLACED_IN)
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if any(p in PRIVATE_NAMES for p in parts) or any(
                    a.name in PRIVATE_NAMES or f"{node.module}.{a.name}" in REPLACED_IN for a in node.names):
                yield node.lineno, f"from {node.module} import ..."
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "setattr", "hasattr") and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and node.args[1].value in PRIVATE_NAMES:
            yield node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"


def test_no_private_use_outside_the_adapters():
    """The privates above are used only by the adapters: not by optimizer/, evaluators/,
    service/ or bench/ elsewhere."""
    found = []
    for pkg in ("optimizer", "evaluators", "service", "bench"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "adapters" in path.relative_to(REPO).parts:
                continue
            for line, what in _private_uses(ast.parse(path.read_text(), str(path))):
                found.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert found == []
