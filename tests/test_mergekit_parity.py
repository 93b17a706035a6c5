"""`mergeopt merge` against mergekit itself: the same YAML gives the same tensors, bit for bit.

mergekit is an optional extra, so the module skips without it. Importing mergekit costs ~4 s
(peft, transformers), so the merges run by mergekit happen in one module-scoped subprocess that
calls, once per config, the function the `mergekit-yaml` console script calls; one test also runs
the console script itself on a config that mergeopt exported."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("mergekit")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from service.cli.main import main  # noqa: E402

from tinypool import make_pool  # noqa: E402

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
MERGEKIT_IN_ONE_PROCESS = """
import sys
from mergekit.scripts.run_yaml import main  # what the mergekit-yaml console script runs
args = sys.argv[1:]
for config, out in zip(args[::2], args[1::2]):
    main([config, out, "--quiet", "--no-cuda"], standalone_mode=False)
"""

# Hand-written mergekit configs ({base}, {c0}.. are the pool folders). Weights are non-uniform
# and do not sum to 1, so normalize on/off really changes the result.
DETERMINISTIC = {
    "linear_normalize": """
merge_method: linear
models:
  - model: {c0}
    parameters: {{weight: 0.5}}
  - model: {c1}
    parameters: {{weight: 0.2}}
  - model: {c2}
    parameters: {{weight: 0.9}}
parameters:
  normalize: true
dtype: float32
""",
    "linear_raw": """
merge_method: linear
models:
  - model: {c0}
    parameters: {{weight: 0.3}}
  - model: {c1}
    parameters: {{weight: 0.5}}
  - model: {c2}
    parameters: {{weight: 0.4}}
parameters:
  normalize: false
dtype: float32
""",
    # mergekit's linear averages the base like any listed model (task-vector methods skip it).
    "linear_base_in_models": """
merge_method: linear
base_model: {base}
models:
  - model: {base}
    parameters: {{weight: 0.4}}
  - model: {c0}
    parameters: {{weight: 0.5}}
  - model: {c1}
    parameters: {{weight: 0.2}}
dtype: float32
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {c0}
    parameters: {{weight: 0.6}}
  - model: {c1}
    parameters: {{weight: 0.3}}
  - model: {c2}
    parameters: {{weight: 0.8}}
parameters:
  lambda: 0.7
dtype: float32
""",
    "task_arithmetic_base_in_models": """
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {base}
    parameters: {{weight: 0.4}}
  - model: {c0}
    parameters: {{weight: 0.6}}
  - model: {c1}
    parameters: {{weight: 0.3}}
parameters:
  normalize: true
dtype: float32
""",
    "ties_normalize": """
merge_method: ties
base_model: {base}
models:
  - model: {c0}
    parameters: {{weight: 0.5, density: 0.3}}
  - model: {c1}
    parameters: {{weight: 0.2, density: 0.6}}
  - model: {c2}
    parameters: {{weight: 0.9, density: 0.9}}
parameters:
  normalize: true
dtype: float32
""",
    "ties_raw": """
merge_method: ties
base_model: {base}
models:
  - model: {c0}
    parameters: {{weight: 0.7, density: 0.3}}
  - model: {c1}
    parameters: {{weight: -0.2, density: 0.6}}
  - model: {c2}
    parameters: {{weight: 0.4, density: 0.9}}
parameters:
  normalize: false
  lambda: 0.8
dtype: float32
""",
    # DARE keeps everything at density 1, so these are deterministic too.
    "dare_ties_density1": """
merge_method: dare_ties
base_model: {base}
models:
  - model: {c0}
    parameters: {{weight: 0.5, density: 1.0}}
  - model: {c1}
    parameters: {{weight: 0.2, density: 1.0}}
  - model: {c2}
    parameters: {{weight: 0.9, density: 1.0}}
parameters:
  normalize: true
dtype: float32
""",
    "dare_linear_density1": """
merge_method: dare_linear
base_model: {base}
models:
  - model: {c0}
    parameters: {{weight: 0.5, density: 1.0}}
  - model: {c1}
    parameters: {{weight: 0.2, density: 1.0}}
  - model: {c2}
    parameters: {{weight: 0.9, density: 1.0}}
parameters:
  lambda: 0.5
dtype: float32
""",
    # A bf16 pool: both compute in fp32 (dtype) and cast once to bf16 (out_dtype).
    "ties_bf16": """
merge_method: ties
base_model: {base}
models:
  - model: {c0}
    parameters: {{weight: 0.5, density: 0.3}}
  - model: {c1}
    parameters: {{weight: 0.2, density: 0.6}}
  - model: {c2}
    parameters: {{weight: 0.9, density: 0.9}}
parameters:
  normalize: true
dtype: float32
out_dtype: bfloat16
""",
}

DARE = {
    method: f"""
merge_method: {method}
base_model: {{base}}
models:
  - model: {{c0}}
    parameters: {{{{weight: 0.5, density: 0.4}}}}
  - model: {{c1}}
    parameters: {{{{weight: 0.3, density: 0.6}}}}
  - model: {{c2}}
    parameters: {{{{weight: 0.8, density: 0.8}}}}
random_seed: {{seed}}
dtype: float32
"""
    for method in ("dare_ties", "dare_linear")
}


def fill(template: str, pool: dict, **extra) -> str:
    paths = {f"c{i}": path for i, (_, path) in enumerate(pool["checkpoints"])}
    return template.format(base=pool["base"], **paths, **extra).lstrip()


def mergeopt_merge(config: Path, out: Path) -> Path:
    assert main(["merge", str(config), str(out), "-q", "--device", "cpu"]) == 0
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


def assert_same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], *, exact=True) -> None:
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        a, b = ours[name], theirs[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if exact:  # same formulas, same fp32 work dtype, same order of operations
            assert torch.equal(a, b), f"{name}: max |diff| {(a.double() - b.double()).abs().max():.3g}"
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def exact_parity(name: str) -> bool:
    # Every method, linear included (mergeopt accumulates with addcmul_ in pool order like
    # mergekit), matches bit for bit.
    return True


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    pools = {
        "fp32": make_pool(root / "pool", n=3, noise=0.05),
        "bf16": make_pool(root / "pool16", n=3, noise=0.05, dtype=torch.bfloat16, seed=1),
    }
    jobs: list[tuple[Path, Path]] = []  # (config, out) for mergekit
    ours, kit, kit_export = {}, {}, {}
    for name, template in DETERMINISTIC.items():
        cfg = root / f"{name}.yml"
        cfg.write_text(fill(template, pools["bf16" if name.endswith("bf16") else "fp32"]))
        ours[name] = mergeopt_merge(cfg, root / "mergeopt" / name)
        kit[name] = root / "mergekit" / name
        kit_export[name] = root / "mergekit-from-export" / name
        jobs += [(cfg, kit[name]), (ours[name] / "mergekit_config.yml", kit_export[name])]
    dare: dict[tuple[str, int], list[Path]] = {}  # (method, seed) -> mergeopt outputs
    for method, template in DARE.items():
        for run, seed in enumerate((1, 1, 2)):
            cfg = root / f"{method}_seed{seed}.yml"
            cfg.write_text(fill(template, pools["fp32"], seed=seed))
            out = mergeopt_merge(cfg, root / "mergeopt" / f"{method}_run{run}")
            dare.setdefault((method, seed), []).append(out)
        kit_export[method] = root / "mergekit-from-export" / method
        jobs.append((dare[(method, 1)][0] / "mergekit_config.yml", kit_export[method]))
    argv = [str(p) for job in jobs for p in job]
    proc = subprocess.run(
        [sys.executable, "-c", MERGEKIT_IN_ONE_PROCESS, *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(root=root, pools=pools, ours=ours, kit=kit, kit_export=kit_export, dare=dare)


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_same_yaml_same_tensors(parity, name):
    assert_same_tensors(tensors(parity.ours[name]), tensors(parity.kit[name]), exact=exact_parity(name))


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_exported_mergekit_config_reproduces_the_merge(parity, name):
    theirs = tensors(parity.kit_export[name])
    assert_same_tensors(tensors(parity.ours[name]), theirs, exact=exact_parity(name))
    # The exported config is the hand-written one, made explicit: mergekit agrees with itself.
    assert_same_tensors(tensors(parity.kit[name]), theirs)


def test_normalize_and_lambda_matter(parity):
    """Guards the parity tests against comparing merges that cannot differ."""
    lin_n, lin_r = tensors(parity.ours["linear_normalize"]), tensors(parity.ours["linear_raw"])
    ties = tensors(parity.ours["ties_normalize"])
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(lin_n[name], lin_r[name])
    assert not torch.equal(ties[name], tensors(parity.ours["ties_raw"])[name])
    assert tensors(parity.ours["ties_bf16"])[name].dtype == torch.bfloat16


def test_mergekit_yaml_console_script_on_exported_config(parity, tmp_path):
    """The real `mergekit-yaml CONFIG OUT` on the config written next to mergeopt's output."""
    assert MERGEKIT_YAML.exists(), MERGEKIT_YAML
    config = parity.ours["ties_raw"] / "mergekit_config.yml"
    out = tmp_path / "mk"
    proc = subprocess.run(
        [str(MERGEKIT_YAML), str(config), str(out), "--quiet"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_tensors(tensors(parity.ours["ties_raw"]), tensors(out))
    # mergekit's own folder loads like ours.
    assert (out / "config.json").exists()


@pytest.mark.parametrize("name", ["linear_normalize", "ties_raw", "ties_bf16"])
def test_output_loads_with_transformers(parity, name):
    out = parity.ours[name]
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("12+34=", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    # The model holds exactly the merged tensors.
    state = model.state_dict()
    for k, t in tensors(out).items():
        assert torch.equal(state[k], t), k


@pytest.mark.parametrize("method", list(DARE))
def test_dare_is_reproducible_per_seed(parity, method):
    first, again = (tensors(p) for p in parity.dare[(method, 1)])
    other = tensors(parity.dare[(method, 2)][0])
    for name in first:
        assert torch.equal(first[name], again[name]), name
    differs = [n for n in first if not torch.equal(first[n], other[n])]
    assert len(differs) == len(first)  # every tensor has its own mask, and it depends on the seed


@pytest.mark.parametrize("method", list(DARE))
def test_mergekit_runs_on_exported_dare_config(parity, method):
    ours = tensors(parity.dare[(method, 1)][0])
    theirs = tensors(parity.kit_export[method])
    assert sorted(ours) == sorted(theirs)
    base = load_file(parity.pools["fp32"]["base"] / "model.safetensors")
    for name, t in theirs.items():
        assert t.dtype == ours[name].dtype and t.shape == ours[name].shape, name
        assert torch.isfinite(t).all(), name
        assert not torch.equal(t, base[name]), name
    exported = (parity.dare[(method, 1)][0] / "mergekit_config.yml").read_text()
    assert "DARE drop masks are random" in exported and "random_seed: 1" in exported


# Every dtype / out_dtype mergekit accepts, on fp32, fp16 and bf16 pools: mergekit casts the
# inputs to `dtype` (none: as stored), merges in it (linear accumulates in fp32) and casts once to
# `out_dtype` (none: stays in `dtype`). Linear and TIES cover both kinds of method.
POOL_DTYPES = ("float32", "float16", "bfloat16")
CONFIG_DTYPES = (None, "float32", "float16", "bfloat16")
DTYPE_METHODS = {
    "linear": """
merge_method: linear
models:
  - model: {c0}
    parameters: {{weight: 0.7}}
  - model: {c1}
    parameters: {{weight: 0.45}}
parameters: {{normalize: false}}
""",
    "ties": """
merge_method: ties
base_model: {base}
models:
  - model: {c0}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {c1}
    parameters: {{weight: 0.35, density: 0.8}}
parameters: {{normalize: true, lambda: 0.9}}
""",
}
DTYPE_CASES = [(p, d, o) for p in POOL_DTYPES for d in CONFIG_DTYPES for o in CONFIG_DTYPES]


def _case_name(pool: str, dtype: str | None, out_dtype: str | None) -> str:
    return f"{pool}-dtype_{dtype}-out_{out_dtype}"


@pytest.fixture(scope="module")
def dtype_parity(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtypes")
    pools = {d: make_pool(root / d, n=2, noise=0.05, dtype=getattr(torch, d), seed=3) for d in POOL_DTYPES}
    jobs, ours, kit = [], {}, {}
    for pool, dtype, out_dtype in DTYPE_CASES:
        for method, template in DTYPE_METHODS.items():
            key = (pool, dtype, out_dtype, method)
            name = f"{_case_name(pool, dtype, out_dtype)}-{method}"
            text = fill(template, pools[pool])
            text += (f"dtype: {dtype}\n" if dtype else "") + (f"out_dtype: {out_dtype}\n" if out_dtype else "")
            cfg = root / f"{name}.yml"
            cfg.write_text(text)
            ours[key] = mergeopt_merge(cfg, root / "mergeopt" / name)
            kit[key] = root / "mergekit" / name
            jobs += [(cfg, kit[key])]
    proc = subprocess.run([sys.executable, "-c", MERGEKIT_IN_ONE_PROCESS, *[str(p) for j in jobs for p in j]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(ours=ours, kit=kit)


@pytest.mark.parametrize(("pool", "dtype", "out_dtype"), DTYPE_CASES, ids=[_case_name(*c) for c in DTYPE_CASES])
def test_every_dtype_combination_matches_mergekit_bit_for_bit(dtype_parity, pool, dtype, out_dtype):
    written = out_dtype or dtype or pool
    for method in DTYPE_METHODS:
        ours = tensors(dtype_parity.ours[(pool, dtype, out_dtype, method)])
        assert {t.dtype for t in ours.values()} == {getattr(torch, written)}, method
        assert_same_tensors(ours, tensors(dtype_parity.kit[(pool, dtype, out_dtype, method)]))
