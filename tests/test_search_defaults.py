"""The search's parameterization: box by default, gated (with a small warm step) opt-in, and a
resumed study keeps the one it was created with when the spec leaves it unset."""

from __future__ import annotations

import optuna
import pytest

from optimizer import records as R
from optimizer.carry_over import stored_spec
from optimizer.loop import StudyRunner
from optimizer.samplers import cmaes_sizes, make_sampler
from optimizer.spec import WARM_SIGMA0, SpecError, parse_spec
from service.studies.runs import open_study as open_stored

from fakes import QuadraticPool

NAMES = ["a", "b", "c"]


def spec(tmp_path, name="s", **search):
    return parse_spec({
        "name": name,
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
        "suite": {"tasks": [{"task": "x"}, {"task": "y"}]},
        "search": {"n_trials": 12, **search},
        "storage": f"sqlite:///{tmp_path}/{name}.db",
    })


def pool():
    return QuadraticPool(NAMES, {"x": [1, 0, 0], "y": [0, 1, 0]})


def test_box_is_the_default_and_both_take_a_small_warm_step(tmp_path):
    s = spec(tmp_path).search
    assert (s.weights, s.weight_mode, s.warm_step) == (None, "box", WARM_SIGMA0)
    assert "weights" not in spec(tmp_path).identity()  # studies stored before the option: the same
    g = spec(tmp_path, weights="gated").search
    assert (g.weight_mode, g.warm_step) == ("gated", WARM_SIGMA0)
    assert spec(tmp_path, weights="gated").identity()["weights"] == "gated"
    assert spec(tmp_path, weights="gated", warm_sigma0=0.3).search.warm_step == 0.3
    assert spec(tmp_path, warm_sigma0=0.2).search.warm_step == 0.2  # box with its own warm step


def test_explicit_gated_weights_refuse_a_granularity_they_do_not_cover(tmp_path):
    with pytest.raises(SpecError, match="gated.*granularity"):
        spec(tmp_path, weights="gated", granularity={"layer_groups": 2})


def test_a_gated_study_searches_gated_weights_from_a_small_warm_step(tmp_path):
    runner = StudyRunner(spec(tmp_path, weights="gated", greedy_soup=False), pool(), progress=False)
    assert runner.space.gated
    assert {(d.low, d.high) for d in runner.space.distributions().values()} == {(-1.0, 1.0)}
    sampler = make_sampler(runner.spec.search, {"w:a": 0.5, "w:b": -0.2, "w:c": -0.2}, 3)
    _, sigma0 = cmaes_sizes(runner.spec.search, 3)
    assert sampler._sigmas == (WARM_SIGMA0, sigma0)  # run 0 the small step, restarts the full one
    runner.run()
    assert len(runner.study.trials) == 12


def _store_gated_study(tmp_path) -> None:
    StudyRunner(spec(tmp_path, weights="gated", n_trials=6, greedy_soup=False), pool(), progress=False).run()
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    assert study.user_attrs[R.A_IDENTITY]["weights"] == "gated"


def test_a_spec_that_leaves_weights_unset_resumes_a_stored_study_with_its_own(tmp_path):
    _store_gated_study(tmp_path)
    runner = StudyRunner(spec(tmp_path, n_trials=10, greedy_soup=False), pool(), progress=False)
    assert (runner.spec.search.weight_mode, runner.space.gated) == ("gated", True)
    runner.run()
    assert len(runner.study.get_trials()) == 10
    # Readers (front, export, the service's adoption) see the same spec.
    _, read = open_stored("s", f"sqlite:///{tmp_path}/s.db")
    assert read.search.weight_mode == "gated"
    assert stored_spec(runner.study.user_attrs).search.weight_mode == "gated"


def test_a_box_study_resumes_as_box_and_refuses_explicit_gated(tmp_path):
    StudyRunner(spec(tmp_path, n_trials=6, greedy_soup=False), pool(), progress=False).run()
    again = StudyRunner(spec(tmp_path, n_trials=9, greedy_soup=False), pool(), progress=False)
    assert not again.space.gated
    again.run()
    assert all(min(t.params.values()) >= 0 for t in again.study.get_trials() if t.params)  # never gated off
    with pytest.raises(SpecError, match="different weights"):
        StudyRunner(spec(tmp_path, weights="gated"), pool(), progress=False)


def test_explicitly_box_on_a_stored_gated_study_is_refused_as_a_different_study(tmp_path):
    _store_gated_study(tmp_path)
    with pytest.raises(SpecError, match="different weights"):
        StudyRunner(spec(tmp_path, weights="box"), pool(), progress=False)


def test_a_box_study_warm_starts_with_the_small_step_never_above_the_cold_one(tmp_path):
    search = spec(tmp_path).search
    x0 = {"w:a": 0.5, "w:b": 0.2, "w:c": 0.2}
    _, sigma0 = cmaes_sizes(search, 3)
    assert make_sampler(search, x0, 3)._sigmas == (WARM_SIGMA0, sigma0)
    assert make_sampler(search, None, 3)._sigmas == (sigma0, sigma0)  # cold start: the full step
    big = {f"w:{i}": 0.5 for i in range(64)}  # 0.3 * 2 / 8 = 0.075 < 0.1: the cold step is smaller
    _, small = cmaes_sizes(search, 64)
    assert small < WARM_SIGMA0 and make_sampler(search, big, 64)._sigmas == (small, small)
    # an explicit warm step is taken as given
    assert make_sampler(spec(tmp_path, warm_sigma0=0.2).search, big, 64)._sigmas == (0.2, small)
