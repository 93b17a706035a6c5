"""The fused flat-buffer merges against the per-tensor reference formulas, across chunk
boundaries, and the flattened model (tied embeddings included) against a fresh load."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from contract.merge import MergeSpec
from evaluators.merging import fused
from evaluators.merging import methods as mm
from evaluators.merging.resident import ResidentModel, ResidentPool
from evaluators.merging.streaming import device_chunks, host_buffer, should_stream
from evaluators.pool.validation import validate_pool
from service.settings import Settings

from tinypool import make_pool, save_model, tiny_config


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(fused, "CPU_CHUNK", 1000)  # many chunks, and a ragged last one


@pytest.mark.parametrize("stage", [False, True], ids=["resident", "streamed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_into_equals_reference(dtype, normalize, stage):
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(4, 10_007, generator=g).to(dtype)
    w = [0.3, 0.9, 0.05, 0.4]
    out = torch.empty(10_007, dtype=dtype)
    fused.linear_into(out, flat, w, normalize=normalize, stage=stage)
    assert torch.equal(out, mm.linear(flat, w, normalize=normalize))


def test_streamed_chunks_are_the_source_in_order_through_two_buffers():
    src = torch.arange(2 * 2503, dtype=torch.float32).reshape(2, 2503)
    seen, buffers = [], set()
    for s, e, chunk in device_chunks(src, torch.device("cpu"), 1000, stage=True):
        assert torch.equal(chunk, src[:, s:e]) and chunk.shape == (2, e - s)
        buffers.add(chunk.untyped_storage().data_ptr())
        seen.append((s, e))
    assert seen == [(0, 1000), (1000, 2000), (2000, 2503)] and len(buffers) == 2
    base = torch.arange(2503, dtype=torch.float32)  # a [P] buffer streams as one row
    parts = [c.clone() for _, _, c in device_chunks(base, torch.device("cpu"), 1000, stage=True)]  # valid until the next
    assert torch.equal(torch.cat(parts), base)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties"])
def test_a_pool_kept_on_the_host_merges_like_a_resident_one(tmp_path, monkeypatch, method):
    pool = make_pool(tmp_path, n=3)
    info = validate_pool(pool["checkpoints"], pool["base"])
    spec = MergeSpec(method=method, weights={"ckpt0": 0.6, "ckpt1": 1.0, "ckpt2": 0.3}, lambda_=0.7,
                     density=0.5 if method == "ties" else None)
    monkeypatch.setenv("MERGEOPT_POOL_ON", "device")
    resident = ResidentModel(ResidentPool(info, torch.device("cpu"), options=Settings().evaluator_options()))
    monkeypatch.setenv("MERGEOPT_POOL_ON", "host")
    streamed = ResidentModel(ResidentPool(info, torch.device("cpu"), options=Settings().evaluator_options()))
    assert streamed.pool.streamed and not resident.pool.streamed
    a, b = resident.materialize(spec).state_dict(), streamed.materialize(spec).state_dict()
    for name in resident.pool.tensor_names:
        assert torch.equal(a[name], b[name]), name


def test_pool_placement_setting_is_checked(monkeypatch):
    monkeypatch.setenv("MERGEOPT_POOL_ON", "gpu")
    with pytest.raises(ValueError, match="pool_on"):
        Settings()
    with pytest.raises(ValueError, match="auto, host or device"):
        should_stream(2, 10, 2, torch.device("cpu"), pool_on="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streaming_from_pinned_memory_on_cuda_equals_resident():
    g = torch.Generator().manual_seed(3)
    flat = torch.randn(5, 3_000_017, generator=g).to(torch.bfloat16)
    host = host_buffer(tuple(flat.shape), flat.dtype)
    host.copy_(flat)
    assert host.is_pinned()
    w = [0.1, 0.5, 0.2, 0.9, 0.3]
    out_streamed = torch.empty(flat.shape[1], dtype=flat.dtype, device="cuda")
    out_resident = torch.empty_like(out_streamed)
    fused.linear_into(out_streamed, host, w, normalize=True)
    fused.linear_into(out_resident, flat.cuda(), w, normalize=True)
    torch.cuda.synchronize()
    assert torch.equal(out_streamed, out_resident)


@pytest.mark.parametrize("stage", [False, True], ids=["resident", "streamed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lam,normalize", [(1.0, False), (0.4, True), (1.3, False)])
def test_task_arithmetic_into_equals_reference(dtype, lam, normalize, stage):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(10_007, generator=g).to(dtype)
    flat = (base + 0.1 * torch.randn(3, 10_007, generator=g)).to(dtype)
    deltas = mm.task_vectors(base, flat)  # the reference's; the fused path forms them per chunk
    w = [0.7, -0.2, 0.5]
    out = torch.empty(10_007, dtype=dtype)
    fused.task_arithmetic_into(out, base, flat, w, lambda_=lam, normalize=normalize, stage=stage)
    assert torch.equal(out, mm.task_arithmetic(base, deltas, w, lambda_=lam, normalize=normalize))


def test_tied_embeddings_follow_the_flat_buffer(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.tie_word_embeddings = True
    from transformers import LlamaForCausalLM

    ckpts = []
    for i in range(2):
        m = LlamaForCausalLM(cfg)
        ckpts.append((f"c{i}", save_model(m, tmp_path / f"c{i}")))
    rp = ResidentPool(validate_pool(ckpts), torch.device("cpu"))
    rm = ResidentModel(rp)
    assert rm.flat_out is not None
    spec = MergeSpec(weights={"c0": 0.25, "c1": 0.75})
    rm.materialize(spec)
    model = rm.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # Saving the resident model and reloading it gives the same logits as the merged tensors.
    model.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.equal(model(ids).logits, reloaded(ids).logits)
    emb = rp.merged(spec, "model.embed_tokens.weight")
    assert torch.equal(model.lm_head.weight, emb)


def test_mixed_dtypes_fall_back_to_the_per_tensor_path(tmp_path):
    from safetensors.torch import load_file, save_file

    pool = make_pool(tmp_path, n=2)
    for path in [pool["base"], *(p for _, p in pool["checkpoints"])]:
        tensors = load_file(path / "model.safetensors")
        norm = next(k for k in tensors if k.endswith("norm.weight"))
        tensors[norm] = tensors[norm].to(torch.bfloat16)  # one bf16 tensor among fp32 ones
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    info = validate_pool(pool["checkpoints"], pool["base"])
    rp = ResidentPool(info, torch.device("cpu"))
    assert rp.flat is None
    rm = ResidentModel(rp)
    assert rm.flat_out is None
    spec = MergeSpec(method="task_arithmetic", weights={"ckpt0": 1.0, "ckpt1": 0.5}, lambda_=0.6)
    rm.materialize(spec)
    state = rm.model.state_dict()
    for name in rp.tensor_names:
        assert torch.equal(state[name], rp.merged(spec, name).to(state[name].dtype)), name


def test_ties_with_cached_rankings_equals_ranking_every_time(tmp_path):
    pool = make_pool(tmp_path, n=3)
    info = validate_pool(pool["checkpoints"], pool["base"])
    rp = ResidentPool(info, torch.device("cpu"), budget=1 << 40)  # room for every ranking
    for density in (0.7, 0.2):  # the second trial reuses the rankings cached by the first
        spec = MergeSpec(method="ties", weights={"ckpt0": 0.6, "ckpt1": 1.0, "ckpt2": 0.3}, density=density)
        for name in rp.tensor_names:
            expected = mm.ties(rp.base[name], rp.deltas()[name], [0.6, 1.0, 0.3], density=density)
            assert torch.equal(rp.merged(spec, name), expected), name
    assert all(rp.caches.get("ties_ranks", name) is not None for name in rp.tensor_names)
    tight = ResidentPool(info, torch.device("cpu"), budget=1)  # over budget: rank per trial, same result
    name = rp.tensor_names[0]
    assert tight.magnitude_ranks(name) is None and tight.caches.held == 0
    assert torch.equal(tight.merged(spec, name), mm.ties(rp.base[name], rp.deltas()[name], [0.6, 1.0, 0.3], density=0.2))


def test_task_vector_merges_keep_no_fp32_copy_of_the_pool(tmp_path):
    """With no memory to spare beyond the floor, task arithmetic, TIES and DARE merge from the pool
    itself: no [N, P] task-vector buffer beside it (8 x 7B would need 224 GB of fp32 for one), and
    the merges equal the formulas."""
    from safetensors.torch import load_file, save_file

    pool = make_pool(tmp_path, n=3)
    for path in [pool["base"], *(p for _, p in pool["checkpoints"])]:  # a bf16 pool, as real ones are
        tensors = {k: v.to(torch.bfloat16) for k, v in load_file(path / "model.safetensors").items()}
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    rp = ResidentPool(validate_pool(pool["checkpoints"], pool["base"]), torch.device("cpu"), budget=1)
    rm = ResidentModel(rp)
    assert rp.flat is not None and rp.flat.dtype == torch.bfloat16
    n, p = rp.flat.shape
    for spec in (MergeSpec(method="task_arithmetic", weights={"ckpt0": 1.0, "ckpt1": 0.5, "ckpt2": 0.2}, lambda_=0.6),
                 MergeSpec(method="ties", weights={"ckpt0": 0.6, "ckpt1": 1.0, "ckpt2": 0.3}, density=0.4)):
        rm.materialize(spec)
        state = rm.model.state_dict()
        for name in rp.tensor_names:
            assert torch.equal(state[name], rp.merged(spec, name).to(state[name].dtype)), name
    big = [k for k, v in vars(rp).items() if isinstance(v, torch.Tensor) and v.numel() >= n * p and v.dtype == torch.float32]
    assert big == [], big  # only the pool itself (bf16) is pool-sized
    assert rp.caches.held == 0
    name = rp.tensor_names[0]
    assert torch.equal(rp.deltas()[name], mm.task_vectors(rp.base[name], rp.stacks[name]))


@pytest.mark.parametrize("free_gb,streamed", [(80, False), (40, False), (24, True), (10, True)])
def test_placement_counts_the_pool_base_and_model_only(monkeypatch, free_gb, streamed):
    """8 x 1B bf16: pool + base + model = 20 GB. It stays on a device with 70% of its free memory
    above that, and streams from the host below (with task vectors no longer kept, a 40 GB
    device holds it: the old rule counted another 32 GB of fp32 task vectors and streamed)."""
    monkeypatch.delenv("MERGEOPT_POOL_ON", raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_gb * 10**9, 80 * 10**9))
    assert should_stream(8, 10**9, 2, torch.device("cuda")) is streamed
