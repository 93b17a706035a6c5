"""The compiled linear pass (evaluators/merging/native.py) against merge_methods.linear bit for bit, over
values that stress every rounding step, and torch's path where it is off or does not apply."""

import pytest
import torch

from evaluators.merging import fused, native
from evaluators.merging import methods as mm
from service.settings import Settings

needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler")


def stress(n: int, p: int, seed: int) -> torch.Tensor:
    """Magnitudes over 1e-40..3e38 (subnormals, overflow to inf), +-0.0, every sign."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g) * torch.exp(torch.randn(n, p, generator=g) * 10)
    x[:, ::13], x[:, ::17] = 0.0, -0.0
    x[:, 5::19] *= 1e-40
    x[:, 7::23] = 3e38
    return x


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [1, 3, 4, 7, 20])
@pytest.mark.parametrize("normalize", [True, False])
def test_the_compiled_pass_is_the_formula_bit_for_bit(dtype, n, normalize):
    flat = stress(n, 70_001 + n, seed=n).to(dtype)  # several thread tasks and a ragged block
    w = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3).tolist()
    out = torch.empty(flat.shape[1], dtype=dtype)
    assert native.supports(out, flat)
    fused.linear_into(out, flat, w, normalize=normalize)
    assert torch.equal(bits(out), bits(mm.linear(flat, w, normalize=normalize)))


@needs_native
def test_granular_runs_take_their_own_weight_rows():
    flat = stress(3, 50_000, seed=1).to(torch.bfloat16)
    rows = [[0.2, 0.5, 0.3], [1.0, -0.4, 0.9]]
    runs = [(0, 10_000, 0), (10_000, 33_333, 1), (33_333, 50_000, 0)]
    out = torch.empty(50_000, dtype=torch.bfloat16)
    fused.linear_into(out, flat, rows, normalize=True, runs=runs)
    for a, b, r in runs:
        assert torch.equal(bits(out[a:b]), bits(mm.linear(flat[:, a:b], rows[r], normalize=True)))


def test_switched_off_or_not_applicable_it_is_torchs_path(monkeypatch):
    flat = stress(4, 5_000, seed=2).to(torch.bfloat16)
    out = torch.empty(5_000, dtype=torch.bfloat16)
    assert not native.supports(out, flat.t().contiguous().t())  # not contiguous
    assert not native.supports(out, flat.to(torch.float16))  # no fp16 kernel
    monkeypatch.setenv("MERGEOPT_NATIVE", "0")
    native.configure(Settings().evaluator_options().native)  # as a pool the service builds does
    try:
        assert native.library() is None and not native.supports(out, flat)
        fused.linear_into(out, flat, [0.1, 0.2, 0.3, 0.4], normalize=True)
        assert torch.equal(bits(out), bits(mm.linear(flat, [0.1, 0.2, 0.3, 0.4], normalize=True)))
    finally:
        native.configure()


def pool_of(n: int, p: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N + 1, P] flat buffer (the base last, as the resident pool lays it out) of stress values."""
    members = stress(n + 1, p, seed).to(dtype)
    members[:n, ::29] = members[n, ::29]  # task vectors exactly zero there
    return members[:n], members[n]


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("normalize,lambda_", [(False, 1.0), (True, 0.7), (False, -1.3)])
def test_compiled_task_arithmetic_is_the_formula_bit_for_bit(dtype, n, normalize, lambda_):
    flat, base = pool_of(n, 70_001, dtype, seed=n)
    w = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 2).tolist()
    out = torch.empty_like(base)
    assert fused.native_task_arithmetic(out, base, flat, False)
    fused.task_arithmetic_into(out, base, flat, w, lambda_=lambda_, normalize=normalize)
    want = mm.task_arithmetic(base, mm.task_vectors(base, flat), w, lambda_=lambda_, normalize=normalize)
    assert torch.equal(bits(out), bits(want))


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,density", [(2, 0.3), (3, 0.05), (4, [0.2, 1.0, 0.0, 0.6]), (4, 0.9)])
@pytest.mark.parametrize("normalize,lambda_", [(True, 1.0), (False, 0.6)])
def test_compiled_ties_is_the_formula_bit_for_bit(dtype, n, density, normalize, lambda_):
    flat, base = pool_of(n, 70_001, dtype, seed=n)
    deltas = mm.task_vectors(base, flat)
    ranks = torch.stack([mm.magnitude_ranks(d, torch.int32) for d in deltas])
    w = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 2).tolist()
    densities = mm._per_model(density, n)
    assert native.supports(base, flat, base, max_n=native.MAX_N)
    got = native.ties(flat, base, ranks, w, densities, normalize=normalize, lambda_=lambda_)
    want = mm.ties(base, deltas, w, density=densities, normalize=normalize, lambda_=lambda_)
    assert torch.equal(bits(got), bits(want))
    assert torch.equal(want, mm.ties(base, deltas, w, density=densities, normalize=normalize, lambda_=lambda_,
                                     ranks=ranks))  # the ranks are mergekit's ranking


def test_pools_over_four_rows_keep_torchs_path():
    """Over 4 rows torch's sum order differs between its vector and scalar columns; the compiled
    passes add in order, so such pools merge with torch's kernels (linear aside: addcmul_ is
    ordered everywhere)."""
    flat, base = pool_of(5, 1000, torch.bfloat16, seed=0)
    assert not native.supports(base, flat, base, max_n=native.MAX_N)
    assert not fused.native_task_arithmetic(torch.empty_like(base), base, flat, False)
