"""End to end on a tiny real pool: CLI run, resume, front, export, scores equal lm-eval's own."""

import json
import math

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from contract.merge import MergeSpec
from evaluators.merging.resident import ResidentModel, ResidentPool
from evaluators.pool.validation import validate_pool
from service.cli.main import main

from tinypool import make_pool, make_tasks


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    pool = make_pool(root / "pool", n=3, noise=0.3)
    include, tasks = make_tasks(root)
    spec = {
        "name": "e2e",
        "pool": {"base": str(pool["base"]), "checkpoints": [{"name": n, "path": str(p)} for n, p in pool["checkpoints"]]},
        "suite": {"include_path": str(include), "tasks": [{"task": tasks[0]}, {"task": tasks[1], "split": "held_out"}]},
        "search": {"n_trials": 12, "method": "ties"},
        "storage": "sqlite:///e2e.db",
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_front_export_and_lm_eval_agreement(study_file, capsys, tmp_path):
    assert main(["run", str(study_file), "-q"]) == 0
    table = capsys.readouterr().out
    assert "hypervolume" in table and "tiny_add" in table
    assert (study_file.parent / "e2e.db").exists()  # relative storage resolved next to the YAML

    assert main(["front", str(study_file), "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front["tasks"] == ["tiny_add", "tiny_sub"] and front["front"]
    entry = front["front"][0]

    out = tmp_path / "export"
    assert main(["export", str(study_file), str(entry["trial"]), str(out), "-q"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (out / "mergekit_config.yml").exists() and (out / "tokenizer.json").exists()

    # The exported tensors are the merge the trial evaluated.
    spec = yaml.safe_load(study_file.read_text())
    pool = validate_pool([(c["name"], c["path"]) for c in spec["pool"]["checkpoints"]], spec["pool"]["base"])
    resident = ResidentModel(ResidentPool(pool, torch.device("cpu")))
    state = resident.state_for_export(MergeSpec.model_validate(entry["merge"]))
    exported = load_file(out / "model.safetensors")
    assert exported.keys() == state.keys()
    assert all(torch.equal(exported[k], state[k]) for k in state)

    # Scores recorded by the study equal lm-eval's own run on the exported checkpoint.
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager, get_task_dict

    from evaluators.scoring.splits import split_documents
    from optimizer.spec import DEFAULT_VALIDATION

    # The front reports validation documents; the search documents' scores come along. Both
    # equal lm-eval's own run on the same documents (the split is recomputed from the task).
    manager = TaskManager(include_path=spec["suite"]["include_path"], include_defaults=False)
    tasks = get_task_dict(["tiny_add", "tiny_sub"], manager)
    splits = {t: split_documents(tasks[t].eval_docs, DEFAULT_VALIDATION) for t in ("tiny_add", "tiny_sub")}
    assert front["split"] == "validation" and entry["intervals"]["documents"] == {t: len(s.validation) for t, s in splits.items()}
    for split, scores in (("validation", entry["raw"]), ("search", entry["search"]["raw"])):
        res = simple_evaluate(
            model="hf", model_args=f"pretrained={out}", tasks=["tiny_add", "tiny_sub"], task_manager=manager,
            samples={t: s.indices(split) for t, s in splits.items()}, bootstrap_iters=0, batch_size=8, device="cpu",
        )
        for task in ("tiny_add", "tiny_sub"):
            assert math.isclose(res["results"][task]["acc,none"], scores[task], abs_tol=1e-9), (split, task)
    iv = entry["intervals"]["raw"]["tiny_add"]
    assert iv["lo"] <= entry["raw"]["tiny_add"] <= iv["hi"]
    assert model is not None


def test_rerun_of_a_finished_study_evaluates_nothing(study_file, capsys):
    assert main(["run", str(study_file), "-q"]) == 0
    import optuna

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{study_file.parent / 'e2e.db'}")
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 12
    assert len(study.trials) == 12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"])
def test_materialize_in_place_equals_the_merge_formula(tmp_path, method, dtype):
    """The fused flat path (linear, task arithmetic) and the per-tensor path write exactly the
    reference formulas' tensors into the model's own storage."""
    pool_dirs = make_pool(tmp_path, n=3, dtype=dtype)
    pool = validate_pool(pool_dirs["checkpoints"], pool_dirs["base"])
    rp = ResidentPool(pool, torch.device("cpu"))
    model = ResidentModel(rp)
    spec = MergeSpec(method=method, weights={"ckpt0": 0.5, "ckpt1": 0.2, "ckpt2": 0.9}, density=0.6, seed=3,
                     lambda_=0.7, normalize=method == "task_arithmetic")
    before = {n: p.data_ptr() for n, p in model.model.named_parameters()}
    model.materialize(spec)
    after = {n: p.data_ptr() for n, p in model.model.named_parameters()}
    assert before == after  # written in place, no new parameter storage
    params = dict(model.model.state_dict())
    assert rp.flat is not None and model.flat_out is not None  # uniform dtype: flat layout
    for name in rp.tensor_names:
        assert params[name].dtype == dtype
        assert torch.equal(params[name], rp.merged(spec, name)), name
    # DARE masks depend only on (seed, tensor): materializing again gives the same tensors.
    again = {n: t.clone() for n, t in params.items()}
    model.materialize(spec)
    assert all(torch.equal(again[n], t) for n, t in model.model.state_dict().items())


def test_unknown_task_and_bad_paths_are_clear_cli_errors(study_file, tmp_path, capsys):
    spec = yaml.safe_load(study_file.read_text())
    spec["name"] = "bad"
    spec["suite"]["tasks"] = [{"task": "no_such_task"}]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    assert main(["run", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task 'no_such_task'" in err and "Traceback" not in err

    spec["suite"]["tasks"] = [{"task": "tiny_add"}]
    spec["pool"]["checkpoints"][1]["path"] = str(tmp_path / "missing")
    bad.write_text(yaml.safe_dump(spec))
    assert main(["run", str(bad), "-q"]) == 2
    assert "path does not exist" in capsys.readouterr().err

    bad.write_text("name: [unclosed")
    assert main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["front", "nope", "--storage", f"sqlite:///{tmp_path}/x.db"]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x.db").exists()  # not created empty
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/x.db")  # a database without that study
    assert main(["front", "nope", "--storage", f"sqlite:///{tmp_path}/x.db"]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
