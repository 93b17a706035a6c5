"""search.granularity: per-layer-group, smooth-over-depth and per-kind merge weights.

Each merge is checked three ways: the fused flat-buffer merge equals the per-tensor reference
bit for bit; both equal float64 formulas written out here from the documented rules (which layer
group, which kind, how control points interpolate); and mergekit-yaml, run on the exported
mergekit_config.yml (filters and slices), writes the same tensors bit for bit."""

import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from contract.granularity import Granularity
from contract.merge import MergeSpec
from evaluators.merging.export import write_merge
from evaluators.merging.granularity import GranularityError, TensorGroups
from evaluators.merging.resident import ResidentModel, ResidentPool
from evaluators.pool.validation import validate_pool
from optimizer.loop import StudyRunner
from optimizer.space import SearchSpace
from optimizer.spec import SpecError, parse_spec
from service.settings import Settings
from service.studies.report import _weights

from fakes import QuadraticPool
from tinypool import save_model, tiny_config

LAYERS = 5  # groups of unequal size (5 layers in 2 groups: 3 + 2)
NAMES = ["ckpt0", "ckpt1", "ckpt2"]
KINDS = ["attention", "mlp", "norms", "embeddings"]
MERGEKIT_IN_ONE_PROCESS = """
import sys
from mergekit.scripts.run_yaml import main
args = sys.argv[1:]
for config, out in zip(args[::2], args[1::2]):
    main([config, out, "--quiet", "--no-cuda"], standalone_mode=False)
"""
CASES = {
    "linear-layer_groups": ("linear", {"layer_groups": 2}, {}),
    "linear-kinds": ("linear", {"kinds": ["mlp", "attention"]}, {"normalize": False}),
    "linear-smooth": ("linear", {"smooth": 3}, {}),
    "task_arithmetic-per_layer": ("task_arithmetic", {"layer_groups": LAYERS}, {"lambda": 0.8}),
    "task_arithmetic-smooth-all_kinds": ("task_arithmetic", {"smooth": 2, "kinds": KINDS}, {"normalize": True}),
    "ties-layer_groups-kinds": ("ties", {"layer_groups": 3, "kinds": ["norms", "mlp"]}, {"density": 0.5}),
    "ties-kinds": ("ties", {"kinds": ["attention"]}, {"density": 0.7, "lambda": 0.9, "normalize": False}),
}


def n_groups(g: dict) -> int:
    kinds = g.get("kinds")
    slots = 1 if not kinds else len(kinds) + (len(kinds) < 4)
    return (g.get("layer_groups") or g.get("smooth") or 1) * slots


def make_spec(method: str, g: dict, extra: dict, seed: int) -> MergeSpec:
    gen = torch.Generator().manual_seed(seed)
    group_weights = {n: (0.1 + torch.rand(n_groups(g), generator=gen, dtype=torch.float64)).tolist() for n in NAMES}
    return MergeSpec(method=method, weights=dict.fromkeys(NAMES, 1.0), granularity=g, group_weights=group_weights,
                     **extra)


# ------------------------------------------------------------------ the rules, restated in float64
def kind_of(name: str) -> str:
    if "norm" in name:
        return "norms"
    if "embed_tokens" in name or name.startswith("lm_head"):
        return "embeddings"
    return "attention" if "self_attn" in name else "mlp"


def expected_weights(name: str, spec: MergeSpec) -> list[float]:
    g = spec.granularity
    m = re.search(r"layers\.(\d+)\.", name)
    layer = int(m.group(1)) if m else (0 if "embed_tokens" in name else LAYERS - 1)  # head, final norm: last
    slots = [k for k in KINDS if k in (g.kinds or [])]
    if g.kinds and len(slots) < 4:
        slots.append("rest")
    slot = 0 if not g.kinds else slots.index(kind_of(name)) if kind_of(name) in slots else slots.index("rest")
    width = len(slots) or 1
    out = []
    for n in NAMES:
        w = spec.group_weights[n]
        if g.smooth:
            points = w[slot::width]
            x = layer / (LAYERS - 1) * (len(points) - 1)
            i0 = math.floor(x)
            frac = x - i0
            out.append((1 - frac) * points[i0] + frac * points[min(i0 + 1, len(points) - 1)])
        else:
            depth = layer * g.layer_groups // LAYERS if g.layer_groups else 0
            out.append(w[depth * width + slot])
    return out


def float64_merge(spec: MergeSpec, name: str, ts: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(expected_weights(name, spec), dtype=torch.float64).reshape(-1, *[1] * base.dim())
    normalize = spec.resolved_normalize
    if spec.method == "linear":
        mixed = (w * ts).sum(0)
        return mixed / w.sum() if normalize else mixed
    d = ts - base
    if spec.method == "ties":
        kept = torch.zeros_like(d)
        for i in range(len(d)):
            k = max(1, int(spec.density * d[i].numel()))
            top = d[i].abs().reshape(-1).argsort(descending=True)[:k]
            kept[i].view(-1)[top] = d[i].reshape(-1)[top]
        weighted = w * kept
        sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(torch.float64)
        agree = (weighted.sign() == sign).to(torch.float64)
        mixed = (weighted * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = (w * d).sum(0)
        divisor = w.sum(0)
    return base + spec.lambda_ * (mixed / divisor if normalize else mixed)


# ------------------------------------------------------------------ pool, merges, mergekit
def make_deep_pool(root: Path, n: int = 3) -> dict:
    torch.manual_seed(7)
    config = tiny_config()
    config.num_hidden_layers = LAYERS
    base = LlamaForCausalLM(config)
    save_model(base, root / "base")
    ckpts = []
    for i in range(n):
        m = LlamaForCausalLM(config)
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        ckpts.append((f"ckpt{i}", save_model(m, root / f"ckpt{i}")))
    return {"base": root / "base", "checkpoints": ckpts}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    pytest.importorskip("mergekit")
    root = tmp_path_factory.mktemp("granularity")
    pool = make_deep_pool(root / "pool")
    info = validate_pool(pool["checkpoints"], pool["base"])
    resident = ResidentPool(info, torch.device("cpu"))
    model = ResidentModel(resident)
    specs = {name: make_spec(method, g, extra, seed) for seed, (name, (method, g, extra)) in enumerate(CASES.items())}
    fused = {name: {k: t.clone() for k, t in model.state_for_export(spec).items()} for name, spec in specs.items()}
    jobs = []
    for name, spec in specs.items():
        write_merge(resident, spec, root / "ours" / name)
        jobs += [root / "ours" / name / "mergekit_config.yml", root / "kit" / name]
    proc = subprocess.run([sys.executable, "-c", MERGEKIT_IN_ONE_PROCESS, *map(str, jobs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(root=root, pool=pool, resident=resident, specs=specs, fused=fused)


@pytest.mark.parametrize("case", list(CASES))
def test_fused_merge_equals_reference_and_float64(merged, case):
    spec, rp = merged.specs[case], merged.resident
    assert rp.merge_flat_into(spec, torch.empty(rp.numel)) == (spec.method != "ties")  # fused: linear and TA
    stacks = {n: rp.stacks[n].double() for n in rp.tensor_names}
    for name in rp.tensor_names:
        reference = rp.merged(spec, name)
        assert torch.equal(merged.fused[case][name], reference), name
        want = float64_merge(spec, name, stacks[name], rp.base[name].double())
        torch.testing.assert_close(reference.double(), want, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_mergekit_reproduces_the_exported_config_bit_for_bit(merged, case):
    ours, theirs = tensors(merged.root / "ours" / case), tensors(merged.root / "kit" / case)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name}: max |diff| {(ours[name] - theirs[name]).abs().max()}"
    cfg = yaml.safe_load((merged.root / "ours" / case / "mergekit_config.yml").read_text())
    g = merged.specs[case].granularity
    assert ("slices" in cfg) == (g.depth > 1)
    if g.layer_groups:
        assert len(cfg["slices"]) == g.layer_groups
    if g.smooth:
        assert len(cfg["slices"]) == LAYERS  # one slice per layer, its interpolated weight written out


def test_groups_really_get_different_weights(merged):
    """Guards the parity tests against granular merges that are model-level merges after all."""
    spec = merged.specs["linear-layer_groups"]
    flat = MergeSpec(method="linear", weights={n: spec.group_weights[n][0] for n in NAMES})
    first, last = "model.layers.0.mlp.up_proj.weight", f"model.layers.{LAYERS - 1}.mlp.up_proj.weight"
    assert torch.equal(merged.resident.merged(spec, first), merged.resident.merged(flat, first))
    assert not torch.equal(merged.resident.merged(spec, last), merged.resident.merged(flat, last))
    kinds = merged.specs["linear-kinds"]
    a, m = expected_weights("model.layers.0.self_attn.q_proj.weight", kinds), expected_weights(
        "model.layers.0.mlp.up_proj.weight", kinds)
    assert a != m and expected_weights("model.norm.weight", kinds) == expected_weights("lm_head.weight", kinds)


def test_streamed_pool_merges_granular_specs_like_the_resident_one(merged, monkeypatch):
    monkeypatch.setenv("MERGEOPT_POOL_ON", "host")
    streamed = ResidentModel(ResidentPool(merged.resident.pool, torch.device("cpu"), options=Settings().evaluator_options()))
    assert streamed.pool.streamed
    for case in ("linear-smooth", "task_arithmetic-per_layer"):
        state = streamed.state_for_export(merged.specs[case])
        assert all(torch.equal(state[n], merged.fused[case][n]) for n in state), case


def test_a_granularity_the_pool_cannot_take_is_a_clear_error(merged):
    spec = make_spec("linear", {"layer_groups": LAYERS + 1}, {}, 0)
    with pytest.raises(GranularityError, match=f"layer_groups is {LAYERS + 1} but the pool has {LAYERS} layers"):
        merged.resident.merge_flat_into(spec, torch.empty(merged.resident.numel))
    # Every kind listed leaves no 'rest' weight for a tensor of none of them.
    with pytest.raises(GranularityError, match="'model.extra.scale' is none of the kinds"):
        TensorGroups.build(Granularity(kinds=KINDS), ["model.layers.0.mlp.up_proj.weight", "model.extra.scale"])


def test_merge_spec_refuses_group_weights_of_the_wrong_shape():
    with pytest.raises(ValueError, match="has 2 values; the granularity has 4 groups"):
        MergeSpec(method="linear", weights={"a": 1.0}, granularity={"layer_groups": 2, "kinds": ["mlp"]},
                  group_weights={"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="come together"):
        MergeSpec(method="linear", weights={"a": 1.0}, granularity={"layer_groups": 2})


# ------------------------------------------------------------------ the search space and the study
def study_spec(tmp_path, granularity, name="g", storage=None, **search):
    return parse_spec({
        "name": name,
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in "abcd"]},
        "suite": {"tasks": [{"task": "x"}, {"task": "y"}, {"task": "z", "split": "held_out"}]},
        "search": {"n_trials": 17, "granularity": granularity, **search},
        "storage": storage or f"sqlite:///{tmp_path}/s.db",
    })


@pytest.mark.parametrize(("granularity", "method", "dimension"), [
    ("model", "linear", 4),
    ({"layer_groups": 3}, "linear", 4 * 3),
    ({"smooth": 4}, "task_arithmetic", 4 * 4 + 1),  # + lambda
    ({"kinds": ["mlp", "attention"]}, "ties", 4 * 3 + 1),  # attention, mlp, rest; + density
    ({"kinds": KINDS}, "linear", 4 * 4),  # every kind listed: no rest
    ({"layer_groups": 2, "kinds": ["norms"]}, "ties", 4 * 2 * 2 + 1),
])
def test_search_space_has_the_expected_dimension(tmp_path, granularity, method, dimension):
    spec = study_spec(tmp_path, granularity, method=method)
    space = SearchSpace(spec.search, spec.checkpoint_names)
    dists = space.distributions()
    assert len(dists) == dimension
    params = {k: (d.low + d.high) / 3 + 0.01 * i for i, (k, d) in enumerate(dists.items())}
    cand = space.candidate(params)
    if granularity != "model":
        g = spec.search.granularity
        assert cand.granularity == g and all(len(ws) == len(g.labels()) for ws in cand.group_weights.values())
        # The evaluators read the same number of groups from the candidate.
        MergeSpec.model_validate(cand.to_json())
    if method != "linear":  # linear embeds rescaled (scale-free); the others exactly
        assert space.embed(cand) == pytest.approx(params)


def test_resumed_per_layer_study_continues_without_redoing_trials(tmp_path):
    spec = study_spec(tmp_path, {"layer_groups": 3})
    ev = QuadraticPool(list("abcd"), {"x": [0.6, 0.4, 0, 0], "y": [0.2, 0.2, 0.6, 0], "z": [0.4, 0.1, 0.2, 0.3]})
    ev.interrupt_on = 15
    with pytest.raises(KeyboardInterrupt):
        StudyRunner(spec, ev, progress=False).run()
    study = optuna.load_study(study_name="g", storage=spec.storage)
    before = {t.number: t.params for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])}
    assert len(before) == 14 and all("w:a:g2" in p for p in before.values())
    ev2 = QuadraticPool(ev.names, {t: list(v) for t, v in ev.targets.items()})
    runner = StudyRunner(spec, ev2, progress=False)
    runner.run()
    after = {t.number: t for t in runner.study.get_trials(states=[optuna.trial.TrialState.COMPLETE])}
    assert len(after) == 17 and all(after[n].params == p for n, p in before.items())
    assert len(ev2.calls) == 17 - len(before)  # no reference, baseline or search trial redone
    searched = [c for c in ev2.calls if c.group_weights is not None]
    assert searched and all(len(ws) == 3 for c in searched for ws in c.group_weights.values())
    # A different granularity is a different study.
    with pytest.raises(SpecError, match="granularity"):
        StudyRunner(study_spec(tmp_path, {"layer_groups": 2}), QuadraticPool(ev.names, {"x": [1, 0, 0, 0]}),
                    progress=False)


@pytest.mark.parametrize(("granularity", "message"), [
    ("layers", "granularity is 'model' or a mapping"),
    (4, "granularity is 'model' or a mapping"),
    ({}, "give layer_groups, smooth and/or kinds"),
    ({"layer_groups": 0}, "search.granularity.layer_groups"),
    ({"layer_groups": 2, "smooth": 3}, "layer_groups or smooth, not both"),
    ({"smooth": 1}, "search.granularity.smooth"),
    ({"kinds": ["ffn"]}, "search.granularity.kinds"),
    ({"kinds": ["mlp", "mlp"]}, "listed twice"),
    ({"depth": 2}, "search.granularity.depth"),
])
def test_bad_granularity_is_a_clear_error(tmp_path, granularity, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        study_spec(tmp_path, granularity)


def test_report_shows_per_group_weights_compactly(tmp_path):
    spec = study_spec(tmp_path, {"layer_groups": 2, "kinds": ["mlp"]})
    space = SearchSpace(spec.search, spec.checkpoint_names)
    params = {k: 0.2 + 0.1 * i for i, k in enumerate(space.distributions())}
    line = _weights(space.candidate(params).to_json())
    # linear: each group's weights as shares of that group's total (group g0.mlp: 0.2, 0.6, 1.0, 1.4 of 3.2)
    assert line.startswith("linear: [2 layer groups x kinds mlp/rest: g0.mlp g0.rest g1.mlp g1.rest] a=0.06/")
    assert " d=0.44/" in line
