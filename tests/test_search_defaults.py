"""The search defaults since issue 18 (gated weights, a small warm step, where measured) and the
carry-over that lets studies stored under the old defaults (box) resume unchanged."""

from __future__ import annotations

import optuna
import pytest

from optimizer import records as R
from optimizer.carry_over import stored_spec
from optimizer.loop import StudyRunner
from optimizer.samplers import cmaes_sizes, make_sampler
from optimizer.spec import GATED_WARM_SIGMA0, SpecError, parse_spec
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


def test_gated_with_a_small_warm_step_is_the_default_where_it_was_measured(tmp_path):
    s = spec(tmp_path).search
    assert (s.weights, s.weight_mode, s.warm_step) == (None, "gated", GATED_WARM_SIGMA0)
    assert spec(tmp_path).identity()["weights"] == "gated"
    # Not measured: other methods, samplers, granularities, signed or shifted ranges keep box.
    for other in ({"method": "ties"}, {"sampler": "tpe"}, {"granularity": {"layer_groups": 2}},
                  {"signed_weights": True}, {"weight_range": [0.1, 1.0]}):
        s = spec(tmp_path, **other).search
        assert (s.weight_mode, s.warm_step) == ("box", None), other
        assert "weights" not in spec(tmp_path, **other).identity()
    # Explicit settings win; warm_sigma0 given applies to box too.
    assert spec(tmp_path, weights="box").search.warm_step is None
    assert spec(tmp_path, weights="box", warm_sigma0=0.2).search.warm_step == 0.2
    assert spec(tmp_path, warm_sigma0=0.3).search.warm_step == 0.3


def test_explicit_gated_weights_refuse_a_granularity_they_do_not_cover(tmp_path):
    with pytest.raises(SpecError, match="gated.*granularity"):
        spec(tmp_path, weights="gated", granularity={"layer_groups": 2})


def test_the_default_study_searches_gated_weights_from_a_small_warm_step(tmp_path):
    runner = StudyRunner(spec(tmp_path, greedy_soup=False), pool(), progress=False)
    assert runner.space.gated
    assert {(d.low, d.high) for d in runner.space.distributions().values()} == {(-1.0, 1.0)}
    sampler = make_sampler(runner.spec.search, {"w:a": 0.5, "w:b": -0.2, "w:c": -0.2}, 3)
    _, sigma0 = cmaes_sizes(runner.spec.search, 3)
    assert sampler._sigmas == (GATED_WARM_SIGMA0, sigma0)  # run 0 the small step, restarts the full one
    runner.run()
    assert len(runner.study.trials) == 12


def _store_old_study(tmp_path) -> None:
    """A study as the defaults before issue 18 stored it: box weights, no 'weights' in its identity
    and none in its stored spec."""
    old = spec(tmp_path, weights="box", n_trials=6, greedy_soup=False)
    StudyRunner(old, pool(), progress=False).run()
    study = optuna.load_study(study_name="s", storage=old.storage)
    stored = study.user_attrs[R.A_SPEC]
    del stored["search"]["weights"], stored["search"]["warm_sigma0"]
    study.set_user_attr(R.A_SPEC, stored)
    assert "weights" not in study.user_attrs[R.A_IDENTITY]


def test_a_study_stored_under_the_old_defaults_resumes_as_box(tmp_path):
    _store_old_study(tmp_path)
    runner = StudyRunner(spec(tmp_path, n_trials=10, greedy_soup=False), pool(), progress=False)
    assert (runner.spec.search.weight_mode, runner.spec.search.warm_step, runner.space.gated) == ("box", None, False)
    runner.run()
    trials = runner.study.get_trials()
    assert len(trials) == 10
    assert all(min(t.params.values()) >= 0 for t in trials if t.params)  # box: never a gated-off value
    # Readers (front, export, the service's adoption) see the same spec.
    _, read = open_stored("s", f"sqlite:///{tmp_path}/s.db")
    assert read.search.weight_mode == "box"
    assert stored_spec(runner.study.user_attrs).search.weight_mode == "box"


def test_explicitly_gated_on_a_stored_box_study_is_refused_as_a_different_study(tmp_path):
    _store_old_study(tmp_path)
    with pytest.raises(SpecError, match="different weights"):
        StudyRunner(spec(tmp_path, weights="gated"), pool(), progress=False)


def test_a_study_created_gated_resumes_gated_from_the_same_spec(tmp_path):
    StudyRunner(spec(tmp_path, n_trials=6, greedy_soup=False), pool(), progress=False).run()
    again = StudyRunner(spec(tmp_path, n_trials=9, greedy_soup=False), pool(), progress=False)
    assert again.space.gated
    again.run()
    assert len(again.study.trials) == 9
    with pytest.raises(SpecError, match="different weights"):
        StudyRunner(spec(tmp_path, weights="box"), pool(), progress=False)
