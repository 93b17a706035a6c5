"""Search options of issue 13: the base as a member of linear merges (pool.base_in_search),
signed weights (search.signed_weights) and CMA-ES sized by dimension with IPOP restarts.

The optimizer tests use analytic fake evaluators (milliseconds per trial); the merge tests run
on a tiny pool against float64 formulas and mergekit-yaml itself."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file

from contract.merge import BASE_WEIGHT, MergeSpec, base_only
from evaluators.merging.export import write_merge
from evaluators.merging.resident import ResidentModel, ResidentPool
from evaluators.pool.validation import validate_pool
from optimizer import ipop
from optimizer.loop import StudyRunner
from optimizer.records import trial_rows
from optimizer.samplers import cmaes_sizes
from optimizer.signed import amplification, repair
from optimizer.space import SearchSpace
from optimizer.spec import WARM_SIGMA0, SpecError, parse_spec
from service.cli.main import main

from tinypool import make_pool, make_tasks

NAMES = ["a", "b", "c"]


def spec_dict(tmp_path, name="t", pool=None, **search) -> dict:
    return {
        "name": name,
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES], **(pool or {})},
        "suite": {"tasks": [{"task": "x"}, {"task": "y"}], "validation": 0},
        "search": {"n_trials": 30, **search},
        "storage": f"sqlite:///{tmp_path}/s.db",
    }


def spec_for(tmp_path, name="t", pool=None, **search):
    return parse_spec(spec_dict(tmp_path, name, pool, **search))


class MemberPool:
    """score_t = 1 / (1 + ||p - target||^2), p the merge's coefficients on (checkpoints..., base): linear
    weights / their sum (signed as they are), task arithmetic base + sum l w_i d_i."""

    def __init__(self, names, target, tasks=("x", "y")):
        self.names, self.target, self.tasks = list(names), np.asarray(target, float), tasks
        self.calls: list[MergeSpec] = []

    checkpoint_names = property(lambda self: self.names)
    has_base = property(lambda self: True)
    directions = property(lambda self: dict.fromkeys(self.tasks, True))

    def point(self, c: MergeSpec) -> np.ndarray:
        if c.method == "task_arithmetic":
            mix = [c.lambda_ * c.weights.get(n, 0.0) for n in self.names]
            return np.array([*mix, 1 - sum(mix)])
        w = np.array([c.weights.get(n, 0.0) for n in [*self.names, BASE_WEIGHT]])
        return w / w.sum()

    last_timings: dict[str, float] = {}  # analytic scores: no stages to time
    last_documents: dict[str, dict] = {}  # exact scores, not means over documents

    def evaluate(self, c: MergeSpec, fidelity: float = 1.0) -> dict[str, float]:
        self.calls.append(c)
        value = 1.0 / (1.0 + float(np.sum((self.point(c) - self.target) ** 2)))  # > 0: normalizable
        return dict.fromkeys(self.tasks, value)

    def validate(self, c: MergeSpec) -> dict[str, dict]:
        """Exact scores (no document noise), as 20 identical validation documents."""
        value = 1.0 / (1.0 + float(np.sum((self.point(c) - self.target) ** 2)))
        return {t: {"score": value, "values": [value] * 20, "aggregation": "mean"} for t in self.tasks}

    def doc_counts(self, split: str = "search") -> dict[str, int]:
        return {}  # exact scores, not means over documents


class Scripted(MemberPool):
    """Scores from ``value(call_number)``: a flat landscape (stalls) or one that keeps improving."""

    def __init__(self, names, value):
        super().__init__(names, np.zeros(len(names) + 1))
        self.value = value

    def evaluate(self, c: MergeSpec, fidelity: float = 1.0) -> dict[str, float]:
        self.calls.append(c)
        return dict.fromkeys(self.tasks, self.value(len(self.calls)))


def search_rows(study):
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("kind") == "search"]


# ------------------------------------------------------------------ spec
def test_base_in_search_is_linear_only_and_needs_a_base(tmp_path):
    with pytest.raises(SpecError, match="base_in_search needs pool.base and search.method 'linear'.*ties"):
        spec_for(tmp_path, pool={"base_in_search": True}, method="ties")
    d = spec_dict(tmp_path, pool={"base_in_search": True})
    del d["pool"]["base"]
    with pytest.raises(SpecError, match="base_in_search needs pool.base"):
        parse_spec(d)
    with pytest.raises(SpecError, match="granularity other than model is not supported yet"):
        spec_for(tmp_path, pool={"base_in_search": True}, granularity={"layer_groups": 2})
    spec = spec_for(tmp_path, pool={"base_in_search": True})
    assert spec.weight_names == [*NAMES, "__base__"] and spec.identity()["pool"]["base_in_search"] is True
    # Studies stored before the option existed have no such key in their identity: still theirs.
    assert "base_in_search" not in spec_for(tmp_path).identity()["pool"]
    assert BASE_WEIGHT == "__base__"  # one key (contract/merge.py) for the optimizer and the evaluators


def test_signed_weights_are_opt_in(tmp_path):
    for method in ("linear", "task_arithmetic"):
        with pytest.raises(SpecError, match="signed_weights"):
            spec_for(tmp_path, method=method, weight_range=[-1, 1])
    assert spec_for(tmp_path, signed_weights=True).search.weight_range == (-1.0, 1.0)
    assert spec_for(tmp_path, signed_weights=True, weight_range=[-0.5, 2]).search.weight_range == (-0.5, 2.0)
    assert spec_for(tmp_path).search.weight_range == (0.0, 1.0)


# ------------------------------------------------------------------ signed weights
def test_repair_caps_the_amplification_by_shrinking_the_minority_sign():
    w = {"a": 0.5, "b": -0.49, "c": 0.0}  # sums to 0.01: coefficients 50 and -49
    fixed = repair(w, 3.0)
    assert math.isclose(amplification(fixed), 3.0)
    assert fixed["a"] == 0.5 and fixed["c"] == 0.0 and -0.49 < fixed["b"] < 0  # only the minority moved
    # A negative majority: the positive side shrinks, the sum keeps its (negative) sign.
    fixed = repair({"a": 0.3, "b": -0.31}, 2.0)
    assert fixed["b"] == -0.31 and math.isclose(amplification(fixed), 2.0) and sum(fixed.values()) < 0
    # Already within the cap, and an exact cancellation, which the rule still resolves.
    assert repair({"a": 1.0, "b": -0.25}, 3.0) == {"a": 1.0, "b": -0.25}
    assert math.isclose(amplification(repair({"a": 0.4, "b": -0.4}, 3.0)), 3.0)


def test_signed_space_repairs_cancelling_weights(tmp_path):
    space = SearchSpace(spec_for(tmp_path, signed_weights=True, max_amplification=4.0).search, NAMES)
    assert {d.low for d in space.distributions().values()} == {-1.0}
    cand = space.candidate({"w:a": 0.6, "w:b": -0.59, "w:c": 0.0})
    assert math.isclose(amplification(cand.weights), 4.0) and cand.weights["a"] == 0.6
    assert space.candidate({"w:a": 0.0, "w:b": 0.0, "w:c": 0.0}).weights == dict.fromkeys(NAMES, 1.0)
    # Non-normalized linear merges divide by nothing: no repair.
    raw = SearchSpace(spec_for(tmp_path, signed_weights=True, normalize=False).search, NAMES)
    assert raw.candidate({"w:a": 0.6, "w:b": -0.59, "w:c": 0.0}).weights["b"] == -0.59


def test_signed_search_extrapolates_past_the_simplex(tmp_path):
    # The optimum 1.6 a - 0.6 b is outside every non-negative mix of the pool.
    target = [1.6, -0.6, 0.0, 0.0]
    results = {}
    for signed in (False, True):
        ev = MemberPool(NAMES, target)
        runner = StudyRunner(spec_for(tmp_path, name=f"s{signed}", signed_weights=signed, n_trials=36), ev,
                             progress=False)
        runner.run()
        results[signed] = max(r.objective for r in trial_rows(runner.study) if r.state == "COMPLETE")
        amps = [amplification(c.weights) for c in ev.calls if c.method == "linear"]
        assert max(amps) <= 3.0 + 1e-9
        assert any(min(c.weights.values()) < 0 for c in ev.calls) == signed
    assert results[True] > results[False] + 0.1


# ------------------------------------------------------------------ the base as a member
def test_space_with_the_base_embeds_the_base_and_task_arithmetic_exactly(tmp_path):
    space = SearchSpace(spec_for(tmp_path, pool={"base_in_search": True}).search, [*NAMES, BASE_WEIGHT])
    assert "w:__base__" in space.distributions()
    assert space.embed(base_only(NAMES)) == {"w:a": 0.0, "w:b": 0.0, "w:c": 0.0, "w:__base__": 0.5}
    ta = MergeSpec(method="task_arithmetic", weights={"a": 0.5, "b": 0.25, "c": 0.5}, lambda_=0.8)
    point = space.embed(ta)
    ev = MemberPool(NAMES, [0, 0, 0, 1])
    assert np.allclose(ev.point(space.candidate(point)), ev.point(ta))  # 0.4, 0.2, 0.4, base 0.0


def test_a_search_keeps_the_base_when_the_base_is_best(tmp_path):
    target = [0.1, 0.0, 0.1, 0.8]  # mostly the base, a little of a and c
    ev = MemberPool(NAMES, target)
    runner = StudyRunner(spec_for(tmp_path, pool={"base_in_search": True}, n_trials=36), ev, progress=False)
    runner.run()
    # Warm start at the base (the best baseline): it is a point of this space.
    assert runner.study.sampler._first_x0 == {"w:a": 0.0, "w:b": 0.0, "w:c": 0.0, "w:__base__": 0.5}
    searched = ev.calls[-(36 - 11):]  # 11 set-up trials: 3 checkpoints, base, 4 merges, greedy soup's 2
    assert all(c.method == "linear" and BASE_WEIGHT in c.weights for c in searched)
    top = max((r for r in trial_rows(runner.study) if r.kind == "search"), key=lambda r: r.objective)
    base_row = next(r for r in trial_rows(runner.study) if r.label == "base")
    assert top.objective > base_row.objective
    p = ev.point(MergeSpec.model_validate(top.candidate))
    assert 0.6 < p[-1] < 0.95


# ------------------------------------------------------------------ CMA-ES sizing and restarts
@pytest.mark.parametrize(("d", "popsize", "sigma"), [
    (1, 4, 0.3), (2, 6, 0.3), (3, 7, 0.3), (4, 8, 0.3), (10, 10, 0.3 * 2 / math.sqrt(10)),
    (48, 15, 0.3 * 2 / math.sqrt(48)),
])
def test_population_and_step_follow_the_dimension(tmp_path, d, popsize, sigma):
    search = spec_for(tmp_path).search
    assert ipop.population(d) == 4 + math.floor(3 * math.log(d)) == popsize
    assert cmaes_sizes(search, d) == (popsize, pytest.approx(sigma))
    assert cmaes_sizes(spec_for(tmp_path, population_size=9, sigma0=0.2).search, d) == (9, 0.2)


def test_the_study_sampler_is_sized_for_its_space(tmp_path):
    runner = StudyRunner(spec_for(tmp_path, pool={"base_in_search": True}, method="linear", n_trials=12),
                         MemberPool(NAMES, [0.25] * 4), progress=False)
    runner.prepare()
    sampler = runner.study.sampler
    # 3 checkpoints + base; warm-started at the best set-up trial: run 0 takes the small step
    assert (sampler._popsize, sampler._sigmas) == (ipop.population(4), (WARM_SIGMA0, 0.3))


def test_a_stalled_search_restarts_with_twice_the_population_and_resumes(tmp_path):
    # A flat landscape: no generation ever beats the first. 4 reference trials (3 checkpoints,
    # the base), then run 0: 3 generations of 4; the next ask starts run 1 with 8.
    opts = {"baselines": False, "population_size": 4, "restart_patience": 2}
    ev = Scripted(NAMES, lambda _: 0.5)
    runner = StudyRunner(spec_for(tmp_path, n_trials=4 + 12 + 5, **opts), ev, progress=False)
    runner.run()
    rows = search_rows(runner.study)
    runs = [t.system_attrs.get(ipop.RESTART_ATTR) for t in rows]
    assert runs == [0] * 12 + [1] * 5
    assert [t.system_attrs["cma:generation"] for t in rows[:12]] == [0] * 4 + [1] * 4 + [2] * 4
    first = rows[12]
    # Run 1 starts at the best trial so far (all tie: the first of them), recorded on its first trial.
    assert ipop.START_ATTR in first.system_attrs and all(ipop.START_ATTR not in t.system_attrs for t in rows[13:])
    assert runner.study.sampler._popsize == 8

    # Resume in a new process: nothing is redone, run 1 continues with its population of 8.
    ev2 = Scripted(NAMES, lambda _: 0.5)
    again = StudyRunner(spec_for(tmp_path, n_trials=4 + 12 + 5 + 9, **opts), ev2, progress=False)
    again.run()
    assert len(ev2.calls) == 9
    rows = search_rows(again.study)
    assert [t.system_attrs.get(ipop.RESTART_ATTR) for t in rows] == [0] * 12 + [1] * 14
    assert [t.system_attrs["cma:r1:generation"] for t in rows[12:]] == [0] * 8 + [1] * 6
    assert again.study.sampler._popsize == 8


def test_an_improving_search_does_not_restart(tmp_path):
    ev = Scripted(NAMES, lambda call: 0.1 + 0.01 * call)  # every generation beats the last
    runner = StudyRunner(spec_for(tmp_path, n_trials=30, baselines=False, population_size=4, restart_patience=2),
                         ev, progress=False)
    runner.run()
    assert {t.system_attrs.get(ipop.RESTART_ATTR) for t in search_rows(runner.study)} == {0}


def test_restarts_none_never_restarts(tmp_path):
    ev = Scripted(NAMES, lambda _: 0.5)
    runner = StudyRunner(spec_for(tmp_path, n_trials=30, baselines=False, population_size=4, restart_patience=1,
                                  restarts="none"), ev, progress=False)
    runner.run()
    rows = search_rows(runner.study)
    assert len(rows) == 26 and {t.system_attrs.get(ipop.RESTART_ATTR) for t in rows} == {0}


# ------------------------------------------------------------------ merges: formulas and mergekit
MERGEKIT_IN_ONE_PROCESS = """
import sys
from mergekit.scripts.run_yaml import main  # what the mergekit-yaml console script runs
args = sys.argv[1:]
for config, out in zip(args[::2], args[1::2]):
    main([config, out, "--quiet", "--no-cuda"], standalone_mode=False)
"""
MERGES = {  # name -> (weights incl. the base's, normalize)
    "signed_normalized": ({"ckpt0": 1.4, "ckpt1": -0.6, "ckpt2": 0.3}, True),
    "signed_raw": ({"ckpt0": 0.9, "ckpt1": -0.35, "ckpt2": 0.2}, False),
    "base_member": ({"ckpt0": 0.3, "ckpt1": 0.2, "ckpt2": 0.1, BASE_WEIGHT: 0.6}, True),
    "base_member_signed": ({"ckpt0": 0.8, "ckpt1": -0.3, "ckpt2": 0.0, BASE_WEIGHT: 0.9}, True),
}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_merges")
    pool = make_pool(root / "pool", n=3, noise=0.05)
    rp = ResidentPool(validate_pool(pool["checkpoints"], pool["base"]), torch.device("cpu"))
    specs = {k: MergeSpec(method="linear", weights=w, normalize=n) for k, (w, n) in MERGES.items()}
    ours = {k: write_merge(rp, s, root / "ours" / k) for k, s in specs.items()}
    return root, pool, rp, specs, ours


def float64_merge(pool: dict, weights: dict[str, float], normalize: bool) -> dict[str, torch.Tensor]:
    folders = dict(pool["checkpoints"]) | {BASE_WEIGHT: pool["base"]}
    members = {n: load_file(Path(folders[n]) / "model.safetensors") for n in weights}
    total = sum(weights.values())
    return {k: sum(w * members[n][k].double() for n, w in weights.items()) / (total if normalize else 1.0)
            for k in members[next(iter(weights))]}


@pytest.mark.parametrize("name", list(MERGES))
def test_signed_and_base_member_merges_equal_float64_formulas(merged, name):
    _, pool, rp, specs, ours = merged
    expect = float64_merge(pool, *MERGES[name])
    got = tensors(ours[name])
    out = torch.empty(rp.numel, dtype=rp.flat.dtype)
    assert rp.merge_flat_into(specs[name], out)  # the search's fused path ...
    for k, t in got.items():
        torch.testing.assert_close(t.double(), expect[k], rtol=0, atol=1e-6)
        assert torch.equal(rp._view(out, k), t), k  # ... and the export's per-tensor path agree exactly


def test_exported_config_lists_the_base_with_its_weight(merged):
    _, pool, _, _, ours = merged
    cfg = yaml.safe_load((ours["base_member"] / "mergekit_config.yml").read_text())
    assert cfg["merge_method"] == "linear" and "base_model" not in cfg
    assert [m["parameters"]["weight"] for m in cfg["models"]] == [0.3, 0.2, 0.1, 0.6]
    assert Path(cfg["models"][-1]["model"]) == Path(pool["base"]).absolute()
    signed = yaml.safe_load((ours["signed_normalized"] / "mergekit_config.yml").read_text())
    assert [m["parameters"]["weight"] for m in signed["models"]] == [1.4, -0.6, 0.3]


@pytest.mark.skipif(not (Path(sys.executable).parent / "mergekit-yaml").exists(), reason="mergekit not installed")
def test_mergekit_yaml_reproduces_signed_and_base_member_exports(merged):
    root, _, _, _, ours = merged
    jobs = [(ours[k] / "mergekit_config.yml", root / "mergekit" / k) for k in MERGES]
    proc = subprocess.run([sys.executable, "-c", MERGEKIT_IN_ONE_PROCESS, *[str(p) for j in jobs for p in j]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for k in MERGES:
        a, b = tensors(ours[k]), tensors(root / "mergekit" / k)
        assert sorted(a) == sorted(b)
        for name in a:
            assert torch.equal(a[name], b[name]), f"{k} {name}: {(a[name] - b[name]).abs().max()}"


def test_a_base_weight_is_for_linear_merges_only():
    with pytest.raises(ValidationError, match="linear merges only"):
        MergeSpec(method="ties", weights={"ckpt0": 1.0, BASE_WEIGHT: 0.5}, density=0.5)
    assert MergeSpec(method="linear", weights={"ckpt0": 1.0, BASE_WEIGHT: 0.5}).has_base_weight


def test_cli_study_with_the_base_and_signed_weights_runs_and_exports(tmp_path, capsys):
    """`mergeopt run` and `mergeopt export` on a real tiny pool: the worker's evaluator takes the
    base's weight, the export lists the base and holds the tensors the trial scored."""
    pool = make_pool(tmp_path / "pool", n=2, noise=0.3)
    include, tasks = make_tasks(tmp_path)
    spec = {"name": "members", "device": "cpu", "storage": "sqlite:///s.db",
            "pool": {"base": str(pool["base"]), "base_in_search": True,
                     "checkpoints": [{"name": n, "path": str(p)} for n, p in pool["checkpoints"]]},
            "suite": {"include_path": str(include), "tasks": [{"task": tasks[0]}, {"task": tasks[1], "split": "held_out"}]},
            "search": {"n_trials": 11, "signed_weights": True}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "-q"]) == 0
    study = optuna.load_study(study_name="members", storage=f"sqlite:///{tmp_path}/s.db")
    trial = [t for t in study.trials if t.user_attrs.get("kind") == "search"][-1]
    weights = trial.user_attrs["candidate"]["weights"]
    assert set(weights) == {"ckpt0", "ckpt1", BASE_WEIGHT} and amplification(weights) <= 3.0 + 1e-9
    out = tmp_path / "export"
    assert main(["export", str(path), str(trial.number), str(out), "-q"]) == 0
    capsys.readouterr()
    cfg = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert [m["parameters"]["weight"] for m in cfg["models"]] == [weights["ckpt0"], weights["ckpt1"], weights[BASE_WEIGHT]]
    resident = ResidentModel(ResidentPool(validate_pool(pool["checkpoints"], pool["base"]), torch.device("cpu")))
    state = resident.state_for_export(MergeSpec.model_validate(trial.user_attrs["candidate"]))
    exported = tensors(out)
    assert exported.keys() == state.keys() and all(torch.equal(exported[k], state[k]) for k in state)
