"""Merge methods against independent float64 reference formulas (numpy, element by element)."""

import numpy as np
import pytest
import torch

from evaluators.merging import methods as mm

N, SHAPE = 4, (7, 5)


@pytest.fixture
def pool():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    tensors = base + 0.1 * torch.randn((N, *SHAPE), generator=g, dtype=torch.float64)
    weights = [0.7, 0.1, 0.45, 0.3]
    return base, tensors, weights


def ref_topk(delta: np.ndarray, density: float) -> np.ndarray:
    if density >= 1:
        return delta
    k = max(1, int(density * delta.size))
    flat = delta.reshape(-1)
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(delta.shape)


def ref_gta(base, deltas, w, *, consensus, normalize, lam):
    """Generalized task arithmetic written out per element."""
    out = np.empty_like(base)
    for idx in np.ndindex(base.shape):
        d = np.array([deltas[i][idx] for i in range(len(w))])
        wd = d * w
        if consensus:
            elected = 1.0 if wd.sum() >= 0 else -1.0
            keep = np.sign(wd) == elected
            mixed, div = wd[keep].sum(), np.asarray(w)[keep].sum()
            div = div if div != 0 else 1.0
        else:
            mixed, div = wd.sum(), sum(w)
            div = div if abs(div) >= 1e-8 else 1.0
        if normalize:
            mixed /= div
        out[idx] = base[idx] + lam * mixed
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_linear(pool, normalize):
    _, tensors, w = pool
    t = tensors.numpy()
    expected = sum(wi * ti for wi, ti in zip(w, t, strict=True)) / (sum(w) if normalize else 1.0)
    got = mm.linear(tensors, w, normalize=normalize)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_linear_bf16_computes_in_fp32_and_casts_back(pool):
    _, tensors, w = pool
    got = mm.linear(tensors.to(torch.bfloat16), w)
    assert got.dtype == torch.bfloat16
    exact = mm.linear(tensors.to(torch.bfloat16).double(), w)
    assert torch.equal(got, exact.to(torch.float32).to(torch.bfloat16))


@pytest.mark.parametrize("lam,normalize", [(1.0, False), (0.4, False), (0.8, True)])
def test_task_arithmetic(pool, lam, normalize):
    base, tensors, w = pool
    deltas = mm.task_vectors(base, tensors)
    got = mm.task_arithmetic(base, deltas, w, lambda_=lam, normalize=normalize)
    expected = ref_gta(base.numpy(), deltas.numpy(), w, consensus=False, normalize=normalize, lam=lam)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("density", [1.0, 0.5, 0.2, [0.3, 0.6, 0.9, 0.1]])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties(pool, density, normalize):
    base, tensors, w = pool
    deltas = mm.task_vectors(base, tensors)
    got = mm.ties(base, deltas, w, density=density, normalize=normalize, lambda_=0.9)
    dens = density if isinstance(density, list) else [density] * N
    trimmed = np.stack([ref_topk(d, p) for d, p in zip(deltas.numpy(), dens, strict=True)])
    expected = ref_gta(base.numpy(), trimmed, w, consensus=True, normalize=normalize, lam=0.9)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_ties_keeps_exactly_k_entries_per_task_vector(pool):
    base, tensors, _ = pool
    deltas = mm.task_vectors(base, tensors)
    kept = mm.magnitude_prune(deltas[0], 0.2)
    assert int((kept != 0).sum()) == int(0.2 * deltas[0].numel())
    assert kept.abs().min() == 0 and kept.abs().max() == deltas[0].abs().max()


def test_one_hot_merges_are_exactly_the_checkpoint(pool):
    base, tensors, _ = pool
    deltas = mm.task_vectors(base, tensors)
    e2 = [0.0, 0.0, 1.0, 0.0]
    assert torch.allclose(mm.linear(tensors, e2), tensors[2], atol=0, rtol=0)
    assert torch.allclose(mm.ties(base, deltas, e2, density=1.0), tensors[2], atol=1e-15)
    assert torch.equal(mm.task_arithmetic(base, deltas, [0.0] * N), base)


@pytest.mark.parametrize("consensus", [True, False])
def test_dare_against_reference_with_the_same_masks(pool, consensus):
    base, tensors, w = pool
    deltas = mm.task_vectors(base, tensors)
    density = 0.4
    fn = mm.dare_ties if consensus else mm.dare_linear
    got = fn(base, deltas, w, density=density, normalize=True, generator=torch.Generator().manual_seed(5))
    # Replay the masks: one Bernoulli draw per task vector, in pool order.
    g = torch.Generator().manual_seed(5)
    dropped = []
    for d in deltas.numpy():
        keep = torch.bernoulli(torch.full(d.shape, density, dtype=torch.float64), generator=g).numpy()
        masked = d * keep
        dropped.append(masked * (np.abs(d).sum() / np.abs(masked).sum()))
    expected = ref_gta(base.numpy(), np.stack(dropped), w, consensus=consensus, normalize=True, lam=1.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_dare_rescale_preserves_l1_and_drops_about_one_minus_density():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(200_000, dtype=torch.float64, generator=g)
    out = mm.bernoulli_drop(d, 0.3, generator=g)
    assert abs(float((out != 0).double().mean()) - 0.3) < 0.01
    assert torch.isclose(out.abs().sum(), d.abs().sum())


def test_weight_count_mismatch_is_an_error(pool):
    _, tensors, _ = pool
    with pytest.raises(ValueError, match="3 weights for a pool of 4"):
        mm.linear(tensors, [1.0, 1.0, 1.0])
