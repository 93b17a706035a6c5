"""The merge contract (contract/): the method table agrees with the tensor functions and the search
space, stored candidates load as they were written, and every point of a search space is a valid
MergeSpec (validated when the optimizer builds it, so no point can fail a trial it used to score)."""

from __future__ import annotations

import inspect
import itertools
import random
from typing import get_args

import pytest
from pydantic import ValidationError

from contract.merge import BASE_WEIGHT, MIN_WEIGHT_SUM, MergeSpec, base_only, one_hot
from contract.methods import METHOD_INFO, MethodName
from evaluators.merging import methods as mm
from optimizer.space import SearchSpace, weight_param
from optimizer.spec import SearchSpec

NAMES = ["a", "b", "c"]


def test_the_method_name_type_names_the_table():
    assert list(get_args(MethodName)) == list(METHOD_INFO)
    assert all(info.name == name and info.description for name, info in METHOD_INFO.items())


@pytest.mark.parametrize("name", list(METHOD_INFO))
def test_the_table_says_what_the_tensor_function_takes(name):
    info, params = METHOD_INFO[name], inspect.signature(mm.METHODS[name]).parameters
    assert set(mm.METHODS) == set(METHOD_INFO)
    assert info.needs_base == (next(iter(params)) == "base")
    assert info.uses_density == ("density" in params)
    assert info.randomized == ("generator" in params)
    assert info.default_normalize == params["normalize"].default


@pytest.mark.parametrize("name", list(METHOD_INFO))
def test_the_search_space_varies_the_searched_parameters(name):
    dists = SearchSpace(SearchSpec(method=name), NAMES).distributions()
    assert {k for k in dists if not k.startswith("w:")} == set(METHOD_INFO[name].searched)


# Stored by the optimizer before the contract (Candidate.to_json()): user_attrs["candidate"].
STORED = [
    {"method": "linear", "weights": {"a": 1.0, "b": 0.0, "c": 0.0}, "density": None, "lambda": 1.0,
     "normalize": True, "seed": 0, "granularity": None, "group_weights": None},
    {"method": "task_arithmetic", "weights": {"a": 0.0, "b": 0.0, "c": 0.0}, "density": None, "lambda": 1.0,
     "normalize": None, "seed": 0, "granularity": None, "group_weights": None},
    {"method": "dare_ties", "weights": {"a": 1.0, "b": 1.0, "c": 1.0}, "density": 0.1, "lambda": 1.0,
     "normalize": True, "seed": 7, "granularity": None, "group_weights": None},
    {"method": "linear", "weights": {"a": 0.5, "b": 0.25, "c": 0.25}, "density": None, "lambda": 1.0,
     "normalize": None, "seed": 3, "granularity": {"layer_groups": 2, "smooth": None, "kinds": ["attention", "mlp"]},
     "group_weights": {"a": [1, 0, 0, 1, 0, 1], "b": [0, 1, 0, 0, 1, 0], "c": [0, 0, 1, 0, 0, 0]}},
    {"method": "linear", "weights": {"a": 0.3, BASE_WEIGHT: 0.7}, "density": None, "lambda": 1.0,
     "normalize": True, "seed": 0},  # written before granularity existed
]


@pytest.mark.parametrize("stored", STORED)
def test_stored_candidates_load_and_store_the_same(stored):
    spec = MergeSpec.model_validate(stored)
    assert MergeSpec.model_validate(spec.to_json()) == spec
    assert spec.to_json() == {"granularity": None, "group_weights": None} | stored


def test_the_baseline_merges_are_valid():
    assert one_hot(NAMES, "b").weight_vector(NAMES) == [0.0, 1.0, 0.0]
    assert base_only(NAMES).needs_base and base_only(NAMES).weight_vector(NAMES) == [0.0, 0.0, 0.0]


SPACES = {
    "linear box": {"method": "linear", "weights": "box"},
    "linear gated": {"method": "linear", "weights": "gated"},
    "linear signed": {"method": "linear", "signed_weights": True, "max_amplification": 1000.0},
    "linear signed raw": {"method": "linear", "signed_weights": True, "normalize": False},
    "linear granular": {"method": "linear", "granularity": {"layer_groups": 2, "kinds": ["mlp"]}},
    "linear granular signed": {"method": "linear", "signed_weights": True, "granularity": {"smooth": 3}},
    "task_arithmetic": {"method": "task_arithmetic", "signed_weights": True},
    "ties": {"method": "ties"},
    "dare_ties granular": {"method": "dare_ties", "granularity": {"kinds": ["attention"]}},
    "dare_linear": {"method": "dare_linear", "normalize": True},
}


def _corners(dists: dict) -> list[dict[str, float]]:
    """Every point with each coordinate at its low end, 0 or its high end, and some that cancel."""
    keys = list(dists)
    levels = [sorted({d.low, min(max(0.0, d.low), d.high), d.high}) for d in dists.values()]
    points = [dict(zip(keys, p, strict=True)) for p in itertools.islice(itertools.product(*levels), 4000)]
    cancel = {k: (0.5 if i % 2 else -0.5) if k.startswith("w:") else dists[k].high for i, k in enumerate(keys)}
    return points + [{k: (v if dists[k].low <= v <= dists[k].high else dists[k].low) for k, v in cancel.items()}]


@pytest.mark.parametrize("label", list(SPACES))
def test_every_point_of_a_space_is_a_valid_merge(label):
    space = SearchSpace(SearchSpec(**SPACES[label]), NAMES)
    dists = space.distributions()
    rng = random.Random(0)
    randoms = [{k: rng.uniform(d.low, d.high) for k, d in dists.items()} for _ in range(300)]
    tiny = [{k: (1e-10 * rng.uniform(-1, 1) if k.startswith("w:") else d.high) for k, d in dists.items()}]
    for point in _corners(dists) + randoms + tiny:
        point = {k: min(max(v, dists[k].low), dists[k].high) for k, v in point.items()}
        spec = space.candidate(point, seed=5)  # raises on an invalid merge
        assert MergeSpec.model_validate(spec.to_json()) == spec
        assert space.candidate(space.embed(spec), seed=5).method == spec.method


def test_weights_that_cancel_below_what_a_normalized_merge_accepts_are_repaired():
    """Barely above the uniform fallback's 1e-9 and repaired at the largest amplification, the sum
    is 2 * 5.0005e-10 / 1001 < MIN_WEIGHT_SUM: the evaluators refused it (a failed trial); built
    by the space now, it takes the same fallback as all-zero weights."""
    space = SearchSpace(SearchSpec(method="linear", signed_weights=True, max_amplification=1000.0), NAMES)
    assert space.candidate({"w:a": 5.0005e-10, "w:b": -5.0e-10, "w:c": 0.0}).weights == dict.fromkeys(NAMES, 1.0)
    repaired = space.candidate({"w:a": 0.5, "w:b": -0.4999, "w:c": 0.0}).weights
    assert repaired["a"] == 0.5 and abs(sum(repaired.values())) > MIN_WEIGHT_SUM  # larger weights: repaired as before


def test_a_merge_with_the_base_embeds_as_a_valid_merge():
    space = SearchSpace(SearchSpec(method="linear", weights="box"), [*NAMES, BASE_WEIGHT])
    for cand, with_base in ((base_only(NAMES), True), (one_hot(NAMES, "a"), False),
                            (MergeSpec(method="task_arithmetic", weights={"a": 0.5, "b": 0.25, "c": 0.5}, lambda_=0.6), True)):
        point = space.embed(cand)
        assert space.candidate(point).weights.keys() == {*NAMES, BASE_WEIGHT}
        assert (point[weight_param(BASE_WEIGHT)] > 0) == with_base


def test_what_the_evaluators_refuse_is_refused_where_it_is_built():
    with pytest.raises(ValidationError, match="sum to zero"):
        MergeSpec(method="linear", weights={"a": 1.0, "b": -1.0})
    with pytest.raises(ValidationError, match="density must be in"):
        MergeSpec(method="ties", weights={"a": 1.0}, density=0.0)
    with pytest.raises(ValidationError, match="linear merges only"):
        MergeSpec(method="ties", weights={"a": 1.0, BASE_WEIGHT: 1.0})
    assert MergeSpec(method="ties", weights={"a": 1.0}).density == 1.0  # mergekit's default
