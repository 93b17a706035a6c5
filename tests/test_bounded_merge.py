"""TIES and DARE merged in chunks (evaluators/merging/bounded.py) against the per-tensor formulas,
across chunk boundaries, with bf16 pools whose task vectors tie at the top-k threshold, and the
resident pool's memory accounting."""

import pytest
import torch

from contract.merge import MergeSpec
from evaluators.merging import bounded as bm
from evaluators.merging import methods as mm
from evaluators.merging import native
from evaluators.merging.resident import ResidentModel, ResidentPool
from evaluators.merging.streaming import resident_bytes
from evaluators.pool.validation import validate_pool
from service.settings import Settings

from tinypool import make_pool

SHAPE = (37, 271)  # 10,027 entries: ragged chunks of any size below


def pool(dtype: torch.dtype, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(SHAPE, generator=g) * 0.02).to(dtype)
    stack = (base.float() + torch.randn((n, *SHAPE), generator=g) * 0.002).to(dtype)
    return stack, base


def stable_orders(deltas: torch.Tensor) -> torch.Tensor:
    """The top-k order of a stable sort: ties at the threshold kept by position."""
    return torch.stack([torch.argsort(d.abs().reshape(-1), descending=True, stable=True) for d in deltas])


def stable_ranks(deltas: torch.Tensor) -> torch.Tensor:
    """Each entry's position in stable_orders."""
    orders = stable_orders(deltas)
    return torch.empty_like(orders).scatter_(1, orders, torch.arange(orders.shape[1]).expand_as(orders))


DENSITIES = [0.35, [0.2, 0.5, 1.0, 0.05], [1.0, 1.0, 1.0, 1.0], [0.0, 0.3, 0.6, 0.9]]


@pytest.mark.parametrize("chunk", [1000, 4096, 1 << 20])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("normalize", [True, False])
def test_ties_in_chunks_equals_the_per_tensor_formula_bit_for_bit(chunk, density, normalize):
    stack, base = pool(torch.bfloat16)
    deltas = mm.task_vectors(base, stack)
    ties_at_threshold = (deltas.abs().reshape(4, -1).sort(dim=1).values.diff(dim=1) == 0).sum()
    assert ties_at_threshold > 1000  # bf16 pools: many equal magnitudes, so the tie rule matters
    w = [0.7, -0.2, 0.4, 1.1]
    want = mm.ties(base, deltas, w, density=density, lambda_=0.8, normalize=normalize, orders=stable_orders(deltas))
    got = bm.ties(stack, base, w, density=density, lambda_=0.8, normalize=normalize, chunk=chunk)
    assert got.dtype == base.dtype and got.shape == base.shape
    assert torch.equal(got, want)


def test_without_ties_it_is_mergekits_argsort_selection():
    """Task vectors whose magnitudes in a row are all distinct: the set is then the unstable
    argsort's (what mergekit uses) and the merge identical to the default path."""
    g = torch.Generator().manual_seed(1)
    numel = SHAPE[0] * SHAPE[1]
    base = torch.zeros(SHAPE)
    signs = torch.randint(0, 2, (4, numel), generator=g) * 2 - 1
    stack = torch.stack([(torch.randperm(numel, generator=g) + 1) / 2**14 for _ in range(4)]) * signs
    stack = stack.reshape(4, *SHAPE).float()
    deltas = mm.task_vectors(base, stack)
    assert all(d.abs().unique().numel() == d.numel() for d in deltas)
    w = [0.5, 0.5, 0.3, 0.9]
    want = mm.ties(base, deltas, w, density=0.3, lambda_=1.0, normalize=True)
    assert torch.equal(bm.ties(stack, base, w, density=0.3, lambda_=1.0, normalize=True, chunk=999), want)


def test_radix_select_finds_the_kth_magnitude_and_its_tie_quota():
    stack, base = pool(torch.bfloat16, n=2)
    deltas = mm.task_vectors(base, stack).reshape(2, -1)
    ks = torch.tensor([1, 3001])
    threshold, quota = bm.topk_thresholds(stack, base, ks, chunk=777)
    for i, k in enumerate(ks.tolist()):
        mags = deltas[i].abs()
        kth = mags.sort(descending=True).values[k - 1]
        assert threshold[i].item() == kth.view(torch.int32).item()
        assert quota[i].item() == k - int((mags > kth).sum())
        assert 1 <= quota[i].item() <= int((mags == kth).sum())


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("chunk", [1000, 1 << 20])
@pytest.mark.parametrize("density", DENSITIES)
def test_ranked_ties_in_chunks_is_mergekits_ranking_bit_for_bit(chunk, density, cached):
    """Rows ranked whole by mergekit's argsort (or the pool's cached int32 rankings), merged in
    chunks: the per-tensor formula exactly, ties at the threshold included."""
    stack, base = pool(torch.bfloat16)
    deltas = mm.task_vectors(base, stack)
    w = [0.7, -0.2, 0.4, 1.1]
    want = mm.ties(base, deltas, w, density=density, lambda_=0.8, normalize=True)
    orders = torch.stack([mm.magnitude_order(d).int() for d in deltas]) if cached else None
    got = bm.ties(stack, base, w, density=density, lambda_=0.8, normalize=True, chunk=chunk, ranked=True,
                  orders=orders)
    assert torch.equal(got, want)


@pytest.mark.parametrize("ranked", [True, False], ids=["ranked", "radix"])
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("chunk", [1000, 1 << 20])
def test_dare_in_chunks_draws_the_formulas_masks(method, chunk, ranked):
    """Both routes drop the same entries; the ranked one sums the rescale's L1 norms over the
    whole row, as the formula does (bit for bit), the radix one per chunk in fp64 (to rounding)."""
    stack, base = pool(torch.bfloat16)
    deltas = mm.task_vectors(base.float(), stack)
    w, density = [0.6, 0.3, 0.8, 0.2], [0.4, 0.7, 1.0, 0.2]
    ref = mm.METHODS[method](base.float(), deltas, w, density=density, lambda_=1.3, normalize=False,
                             generator=torch.Generator().manual_seed(5))
    got = bm.METHODS[method](stack, base.float(), w, density=density, lambda_=1.3, normalize=False,
                             generator=torch.Generator().manual_seed(5), chunk=chunk, ranked=ranked)
    assert torch.equal(got == base.float(), ref == base.float())
    if ranked:
        assert torch.equal(got, ref)
    else:
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_the_resident_pool_ranks_mid_sized_tensors_as_mergekit_does(tmp_path, monkeypatch, method):
    """Tensors over CHUNK_MIN are merged in chunks with mergekit's ranking: the same tensors as the
    per-tensor path (and the export) bit for bit, written in place."""
    p = make_pool(tmp_path, n=3, dtype=torch.bfloat16)
    rp = ResidentPool(validate_pool(p["checkpoints"], p["base"]), torch.device("cpu"))
    spec = MergeSpec(method=method, weights={"ckpt0": 0.5, "ckpt1": 0.8, "ckpt2": 0.3},
                     density={"ckpt0": 0.3, "ckpt1": 0.6, "ckpt2": 0.9}, seed=3)
    monkeypatch.delenv("MERGEOPT_BOUNDED_MIN", raising=False)
    monkeypatch.setattr(native, "supports", lambda *a, **k: False)  # torch's chunks, not one compiled pass
    per_tensor = {n: rp.merged(spec, n) for n in rp.tensor_names}
    monkeypatch.setattr(bm, "CHUNK_MIN", 100)
    calls = []
    real = bm.METHODS[method]
    monkeypatch.setitem(bm.METHODS, method, lambda *a, **k: calls.append(k["ranked"]) or real(*a, **k))
    for name in rp.tensor_names:
        target = torch.empty_like(per_tensor[name])
        got = rp.merged(spec, name, out=target)
        assert (got is target) == (target.numel() > 100)  # smaller ones: the per-tensor formula
        assert torch.equal(got, per_tensor[name]), name
    assert calls and all(calls)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_the_resident_pool_merges_large_tensors_in_chunks(tmp_path, monkeypatch, method):
    """Tensors above MERGEOPT_BOUNDED_MIN take the bounded path where the budget holds no
    rankings; the others the per-tensor one; the model's merge is the same either way (TIES to
    the stable tie rule, DARE to rounding)."""
    p = make_pool(tmp_path, n=3, dtype=torch.bfloat16)
    rp = ResidentPool(validate_pool(p["checkpoints"], p["base"]), torch.device("cpu"), budget=1)
    spec = MergeSpec(method=method, weights={"ckpt0": 0.5, "ckpt1": 0.8, "ckpt2": 0.3},
                     density={"ckpt0": 0.3, "ckpt1": 0.6, "ckpt2": 0.9}, seed=3)
    name = max(rp.tensor_names, key=lambda n: rp.base[n].numel())
    monkeypatch.setenv("MERGEOPT_BOUNDED_MIN", str(10**12))
    monkeypatch.setattr(rp, "options", Settings().evaluator_options())  # as the service builds its pools
    if method == "ties":  # the per-tensor path with the stable tie rule
        monkeypatch.setattr(rp, "magnitude_ranks", lambda n: stable_ranks(rp.deltas()[n]))
    per_tensor = rp.merged(spec, name)
    monkeypatch.undo()
    monkeypatch.setenv("MERGEOPT_BOUNDED_MIN", "100")
    monkeypatch.setattr(rp, "options", Settings().evaluator_options())
    chunked = rp.merged(spec, name)
    target = torch.empty_like(chunked)
    assert rp.merged(spec, name, out=target) is target and torch.equal(target, chunked)  # in place
    if method == "ties":
        assert torch.equal(chunked, per_tensor)
    else:
        torch.testing.assert_close(chunked.float(), per_tensor.float(), rtol=1e-2, atol=1e-4)
    assert chunked.dtype == torch.bfloat16


def test_resident_bytes_is_what_the_pool_and_model_hold(tmp_path):
    """The floor bench/memory.py divides by, and the placement rule's number: the pool's and the
    base's rows and the model's one flat copy, nothing else of size P."""
    p = make_pool(tmp_path, n=3, dtype=torch.bfloat16)
    rp = ResidentPool(validate_pool(p["checkpoints"], p["base"]), torch.device("cpu"))
    model = ResidentModel(rp)
    held = rp.members.nbytes + model.flat_out.nbytes
    assert held == resident_bytes(3, rp.numel, 2) == 5 * rp.numel * 2
    assert resident_bytes(3, rp.numel, 2, has_base=False) == 4 * rp.numel * 2
    params = {t.untyped_storage().data_ptr() for t in model.model.parameters()}
    assert params == {model.flat_out.untyped_storage().data_ptr()}  # no parameter outside it


def test_the_export_is_the_merge_the_search_scored(tmp_path, monkeypatch):
    """Chunked tensors are exported as they were scored (one rounding, to the written dtype),
    though mergekit's unstable argsort would keep other entries tied at the threshold."""
    from safetensors.torch import load_file

    from evaluators.merging.export import write_merge

    monkeypatch.setenv("MERGEOPT_BOUNDED_MIN", "100")
    p = make_pool(tmp_path, n=3, dtype=torch.bfloat16)  # no room for rankings: the radix select
    rp = ResidentPool(validate_pool(p["checkpoints"], p["base"]), torch.device("cpu"), budget=1,
                      options=Settings().evaluator_options())
    w = {"ckpt0": 0.5, "ckpt1": 0.8, "ckpt2": 0.3}
    spec = MergeSpec(method="ties", weights=w, density=0.3)
    written = load_file(str(write_merge(rp, spec, tmp_path / "bf16") / "model.safetensors"))
    wide = load_file(str(write_merge(rp, spec, tmp_path / "fp32", out_dtype="float32") / "model.safetensors"))
    differs = 0
    for name in rp.tensor_names:
        scored = rp.merged(spec, name)
        assert torch.equal(written[name], scored), name
        assert wide[name].dtype == torch.float32 and torch.equal(wide[name].to(torch.bfloat16), scored)
        mergekit = mm.ties(rp.base[name], rp.deltas()[name], list(w.values()), density=0.3)
        differs += not torch.equal(scored, mergekit)
    assert differs  # the tie rule is visible here, so the test can fail


def test_the_route_radix_selects_only_where_one_row_cannot_be_ranked(monkeypatch):
    monkeypatch.delenv("MERGEOPT_BOUNDED_MIN", raising=False)
    small = resident_bytes(4, 494_000_000, 2)  # the memory bench: 4 x Qwen2.5-0.5B's shape
    assert bm.route(4, 151_936 * 896, small) == "radix"  # its embedding: 3.8 GB to rank one row
    assert bm.route(4, 4864 * 896, small) == "ranked"  # an MLP matrix
    assert bm.route(4, 896 * 896, small) is None  # under 1M entries: the per-tensor formula
    big = resident_bytes(8, 6_740_000_000, 2)  # 8 x Llama-2-7B: nothing but mergekit's ranking
    assert bm.route(8, 11_008 * 4096, big) == "ranked" and bm.route(8, 32_000 * 4096, big) == "ranked"
    monkeypatch.setenv("MERGEOPT_BOUNDED_MIN", "1000")
    forced = Settings().evaluator_options().bounded_min
    assert bm.route(8, 1001, big, forced) == "radix" and bm.route(8, 1000, small, forced) is None
