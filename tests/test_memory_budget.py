"""The study's memory budget (evaluators/merging/memory_budget.py): how it is read, what it caches, and
that every path it picks - cached, partly cached, bounded - merges bit for bit alike."""

import pytest
import torch

from contract.merge import MergeSpec
from evaluators.merging import bounded as bm
from evaluators.merging import fused, memory_budget, native
from evaluators.merging import methods as mm
from evaluators.merging.memory_budget import Caches, parse, resolve
from evaluators.merging.resident import ResidentModel, ResidentPool
from evaluators.merging.streaming import should_stream
from evaluators.pool.validation import validate_pool
from service.settings import Settings

from tinypool import make_pool

CPU = torch.device("cpu")
needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler")
W = {"ckpt0": 0.6, "ckpt1": 1.0, "ckpt2": 0.3}


@pytest.mark.parametrize("text,want", [
    ("24GiB", ("bytes", 24 * 2**30)), ("12G", ("bytes", 12e9)), ("500MB", ("bytes", 500e6)),
    ("2e10", ("bytes", 2e10)), ("1000", ("bytes", 1000)), ("0.6", ("share", 0.6)), ("60%", ("share", 0.6)),
    ("1", ("share", 1.0)), (" 8 gib ", ("bytes", 8 * 2**30)),
])
def test_the_setting_is_bytes_or_a_share_of_available_memory(text, want):
    assert parse(text) == want


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "0%", "150%", "12 GB RAM"])
def test_a_bad_setting_is_a_clear_error(text):
    with pytest.raises(ValueError, match="MERGEOPT_MEMORY_BUDGET"):
        parse(text)


def test_the_budget_is_read_at_study_start_from_the_environment(monkeypatch):
    monkeypatch.setattr(memory_budget, "available", lambda device: 10 * 2**30)
    from_env = lambda: Settings().evaluator_options().memory_budget  # noqa: E731 (as the service passes it)
    monkeypatch.delenv(memory_budget.ENV, raising=False)
    assert resolve(CPU, from_env()) == resolve(CPU) == int(memory_budget.DEFAULT_SHARE * 10 * 2**30)
    monkeypatch.setenv(memory_budget.ENV, "50%")
    assert resolve(CPU, from_env()) == 5 * 2**30
    monkeypatch.setenv(memory_budget.ENV, "3GiB")
    assert resolve(CPU, from_env()) == 3 * 2**30
    assert resolve(CPU, 1234) == 1234 and resolve(CPU, "0.25") == 10 * 2**30 // 4  # passed in: wins


def test_the_available_memory_is_real():
    assert 0 < memory_budget.available(CPU)


def test_caches_fit_the_budget_beside_the_floor_and_evict_other_kinds_first():
    caches = Caches(budget=1000, floor=600)  # 400 bytes to spare
    assert caches.put("a", "x", 256, lambda: torch.zeros(64)) is not None  # 256 bytes
    assert caches.put("a", "y", 256, lambda: torch.zeros(64)) is None  # its own kind is never evicted
    assert caches.put("b", "x", 400, lambda: torch.zeros(100), scratch=4) is None  # with scratch: over
    built = caches.put("b", "x", 400, lambda: torch.zeros(100))
    assert built is not None and caches.get("a", "x") is None and caches.held == 400  # "a" made room
    assert caches.free == 0 and caches.room("b") == 0 and caches.room("a") == 400


@pytest.mark.parametrize("free_gb,budget_gb,streamed", [(80, None, False), (80, 19, True), (24, None, True),
                                                        (24, 21, False)])
def test_placement_uses_the_same_budget(monkeypatch, free_gb, budget_gb, streamed):
    """8 x 1B bf16: pool + base + model = 20 GB; default budget 70% of the free GPU memory."""
    monkeypatch.delenv("MERGEOPT_POOL_ON", raising=False)
    monkeypatch.delenv(memory_budget.ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_gb * 10**9, 80 * 10**9))
    budget = None if budget_gb is None else budget_gb * 10**9
    assert should_stream(8, 10**9, 2, torch.device("cuda"), budget) is streamed
    if budget_gb is not None:
        monkeypatch.setenv(memory_budget.ENV, f"{budget_gb}G")
        options = Settings().evaluator_options()  # as the service passes MERGEOPT_MEMORY_BUDGET in
        cuda = torch.device("cuda")
        assert should_stream(8, 10**9, 2, cuda, resolve(cuda, options.memory_budget), options.pool_on) is streamed


@pytest.fixture
def bf16_pool(tmp_path):
    pool = make_pool(tmp_path, n=3, dtype=torch.bfloat16)  # as real pools are; the model flat too
    return validate_pool(pool["checkpoints"], pool["base"])


def budgets(info) -> dict[str, int]:
    """Budgets for: no cache, part of one, everything."""
    probe = ResidentPool(info, CPU, budget=1)
    floor = probe.caches.floor
    n, p = probe.flat.shape
    return {"bounded": 1, "partial": floor + n * p * 4 // 2, "cached": floor + 4 * n * p * 4}


def test_task_arithmetic_caches_what_fits_and_merges_alike(bf16_pool, monkeypatch):
    """torch's path (a GPU, or no C compiler) caches fp32 task vectors as far as the budget goes."""
    monkeypatch.setattr(fused, "CPU_CHUNK", 1000)  # many chunks: the cached prefix ends inside the pool
    monkeypatch.setattr(fused, "native_task_arithmetic", lambda *a: False)
    spec = MergeSpec(method="task_arithmetic", weights=W, lambda_=0.7)
    states, widths = {}, {}
    for label, budget in budgets(bf16_pool).items():
        rp = ResidentPool(bf16_pool, CPU, budget=budget)
        model = ResidentModel(rp)
        states[label] = {k: v.clone() for k, v in model.materialize(spec).state_dict().items()}
        cached = rp.caches.get("task_vectors", "flat")
        widths[label] = 0 if cached is None else cached.shape[1]
        if cached is not None:
            assert torch.equal(cached, mm.task_vectors(rp.flat_base, rp.flat)[:, :widths[label]])
        for name in rp.tensor_names:  # the per-tensor formula, task vectors cached or formed
            assert torch.equal(states[label][name], rp.merged(spec, name)), (label, name)
    p = rp.numel
    assert widths["bounded"] == 0 and 0 < widths["partial"] < p and widths["cached"] == p
    assert widths["partial"] % 1000 == 0  # whole chunks
    for label in ("partial", "cached"):
        for name, t in states["bounded"].items():
            assert torch.equal(states[label][name], t), (label, name)


@needs_native
def test_compiled_task_arithmetic_caches_nothing_and_merges_alike(bf16_pool):
    """Forming task vectors as it reads the pool beats reading cached fp32 ones: no cache."""
    spec = MergeSpec(method="task_arithmetic", weights=W, lambda_=0.7, normalize=True)
    rp = ResidentPool(bf16_pool, CPU, budget=budgets(bf16_pool)["cached"])
    state = ResidentModel(rp).materialize(spec).state_dict()
    assert rp.caches.held == 0
    for name in rp.tensor_names:
        assert torch.equal(state[name], rp.merged(spec, name)), name


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
@pytest.mark.parametrize("chunk_min", [10**9, 100], ids=["per-tensor", "chunked"])
def test_ties_caches_rankings_that_fit_and_merges_alike(bf16_pool, monkeypatch, chunk_min, compiled):
    """Cached rankings (merged by the compiled pass or torch's) or ranking per candidate, per
    tensor or in chunks: the same merge."""
    if compiled and native.library() is None:
        pytest.skip("no C compiler")
    if not compiled:
        monkeypatch.setattr(native, "supports", lambda *a, **k: False)
    monkeypatch.setattr(bm, "CHUNK_MIN", chunk_min)
    monkeypatch.delenv("MERGEOPT_BOUNDED_MIN", raising=False)
    specs = [MergeSpec(method="ties", weights=W, density=d) for d in (0.3, {"ckpt0": 0.2, "ckpt1": 1.0, "ckpt2": 0.7})]
    merged, held = {}, {}
    for label, budget in budgets(bf16_pool).items():
        rp = ResidentPool(bf16_pool, CPU, budget=budget)
        model = ResidentModel(rp)
        merged[label] = [{k: v.clone() for k, v in model.materialize(s).state_dict().items()} for s in specs]
        held[label] = sum(rp.caches.get("ties_ranks", n) is not None for n in rp.tensor_names)
    assert held["bounded"] == 0 and 0 < held["partial"] < len(rp.tensor_names) == held["cached"]
    for i, spec in enumerate(specs):
        for name in rp.tensor_names:
            want = mm.ties(rp.base[name], rp.deltas()[name], list(W.values()),
                           density=spec.density_vector(list(W)))  # mergekit's formula, ranked afresh
            for label in merged:
                assert torch.equal(merged[label][i][name], want), (label, name)


def test_a_method_switch_evicts_the_other_cache(bf16_pool, monkeypatch):
    """Room for one kind of cache: the set-up trials' TIES after task arithmetic (torch's path,
    which caches task vectors) takes it over."""
    monkeypatch.setattr(fused, "native_task_arithmetic", lambda *a: False)
    probe = ResidentPool(bf16_pool, CPU, budget=1)
    n, p = probe.flat.shape
    largest = max(t.numel() for t in probe.base.values())  # ranked one row at a time
    rp = ResidentPool(bf16_pool, CPU, budget=probe.caches.floor + n * p * 4 + bm.row_scratch(1, largest))
    model = ResidentModel(rp)
    model.materialize(MergeSpec(method="task_arithmetic", weights=W))
    assert rp.caches.get("task_vectors", "flat") is not None
    model.materialize(MergeSpec(method="ties", weights=W, density=0.4))
    assert rp.caches.get("task_vectors", "flat") is None
    assert all(rp.caches.get("ties_ranks", name) is not None for name in rp.tensor_names)
    assert rp.caches.held <= rp.budget - rp.caches.floor
