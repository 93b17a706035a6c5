"""The search, resumability, baselines and the front, with analytic fake evaluators."""

import numpy as np
import optuna
import pytest

from optimizer.front import hypervolume, non_dominated
from optimizer.loop import StudyFailed, StudyRunner
from optimizer.normalize import normalize
from optimizer.records import trial_rows
from optimizer.spec import SpecError, parse_spec

from fakes import QuadraticPool

NAMES = ["a", "b", "c", "d"]


def spec_for(tmp_path, name="t", storage=None, **search):
    return parse_spec({
        "name": name,
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
        "suite": {"tasks": [{"task": "x"}, {"task": "y"}, {"task": "z", "split": "held_out"}]},
        "search": {"n_trials": 40, **search},
        "storage": storage or f"sqlite:///{tmp_path}/s.db",
    })


HELPS = {"x": [0.6, 0.4, 0.0, 0.0], "y": [0.2, 0.2, 0.6, 0.0], "z": [0.4, 0.1, 0.2, 0.3]}


def best(study):
    rows = [r for r in trial_rows(study) if r.state == "COMPLETE"]
    return max(rows, key=lambda r: r.objective)


def test_cmaes_beats_every_baseline_when_merging_helps(tmp_path):
    ev = QuadraticPool(NAMES, HELPS, k=2.0)
    # 41: every trial counts, the base's too: 32 search trials, as before the base was a trial.
    runner = StudyRunner(spec_for(tmp_path, n_trials=41), ev, progress=False)
    runner.run()
    rows = trial_rows(runner.study)
    assert sum(r.state == "COMPLETE" for r in rows) == 41
    assert [r.kind for r in rows if r.label == "base"] == ["baseline"]
    baselines = [r for r in rows if r.kind == "baseline"]
    assert {r.label for r in baselines} >= {"checkpoint:a", "uniform", "task_arithmetic", "ties", "dare_ties"}
    top = best(runner.study)
    assert top.kind == "search"
    assert top.objective > max(r.objective for r in baselines) + 0.02
    # The analytic optimum of the mean is the mean of the targets.
    p = ev.point(runner.space.candidate({f"w:{n}": top.candidate["weights"][n] for n in NAMES}))
    optimum = np.mean([HELPS[t] for t in HELPS], axis=0)
    assert np.abs(p - optimum).sum() < 0.25


def test_front_says_so_when_a_single_checkpoint_is_best(tmp_path):
    # Every mixture pays a penalty: checkpoint 'a' (closest to both targets) is the optimum.
    targets = {"x": [0.9, 0.1, 0, 0], "y": [0.8, 0, 0.2, 0], "z": [1.0, 0, 0, 0]}
    ev = QuadraticPool(NAMES, targets, penalty=0.6)
    runner = StudyRunner(spec_for(tmp_path, n_trials=30), ev, progress=False)
    front = runner.run()
    top = best(runner.study)
    single_a = next(r for r in trial_rows(runner.study) if r.label == "checkpoint:a")
    assert top.objective <= single_a.objective + 1e-9 or top.objective - single_a.objective < 1e-3
    assert single_a.number in front["trials"]


def test_cmaes_reaches_a_near_one_hot_optimum_from_a_merge_start(tmp_path):
    # Optimum 90% on "c": near a vertex, which a centred start with a small step rarely reaches.
    t = [0.05, 0.0, 0.9, 0.05]
    ev = QuadraticPool(NAMES, {"x": t, "y": t, "z": t}, k=3.0)
    runner = StudyRunner(spec_for(tmp_path, n_trials=45), ev, progress=False)
    runner.run()
    top = best(runner.study)
    w = np.array([top.candidate["weights"][n] for n in NAMES])
    assert (w / w.sum())[2] > 0.8


def test_front_is_exactly_the_non_dominated_set(tmp_path):
    ev = QuadraticPool(NAMES, HELPS)
    runner = StudyRunner(spec_for(tmp_path, sampler="nsga2", n_trials=30), ev, progress=False)
    front = runner.run()
    rows = [r for r in trial_rows(runner.study) if r.state == "COMPLETE"]
    tasks = ["x", "y", "z"]
    pts = {r.number: np.array([r.normalized[t] for t in tasks]) for r in rows}
    on = set(front["trials"])
    for n, p in pts.items():
        dominated = any(np.all(q >= p) and np.any(q > p) for m, q in pts.items() if m != n)
        assert (n in on) == (not dominated), n
    assert front["hypervolume"] == pytest.approx(hypervolume(np.array([pts[n] for n in on])))
    assert len(runner.study.directions) == 3


def test_resume_after_interrupt_does_not_redo_finished_trials(tmp_path, storage_url, study_name):
    spec = spec_for(tmp_path, name=study_name, storage=storage_url, n_trials=17)
    ev = QuadraticPool(NAMES, HELPS)
    ev.interrupt_on = 14
    with pytest.raises(KeyboardInterrupt):
        StudyRunner(spec, ev, progress=False).run()
    study = optuna.load_study(study_name=study_name, storage=spec.storage)
    done_before = {t.number: t.params for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])}
    # 14 evaluations before the interrupt: 5 references (4 singles + base, each a trial), 4 merge
    # baselines, 3 greedy soups, 1 search trial completed, the 14th interrupted.
    assert len(done_before) == 5 + 4 + 3 + 1
    ev2 = QuadraticPool(NAMES, HELPS)
    runner = StudyRunner(spec, ev2, progress=False)
    runner.run()
    done_after = {t.number: t.params for t in runner.study.get_trials(states=[optuna.trial.TrialState.COMPLETE])}
    assert len(done_after) == 17
    assert all(done_after[n] == p for n, p in done_before.items())
    # Only the missing trials were evaluated: no reference or baseline was redone.
    assert len(ev2.calls) == 17 - len(done_before)
    failed = runner.study.get_trials(states=[optuna.trial.TrialState.FAIL])
    assert [t.user_attrs["error"] for t in failed] == ["interrupted"]
    optuna.delete_study(study_name=study_name, storage=spec.storage)


def test_failed_trials_store_the_error_and_the_study_goes_on(tmp_path):
    ev = QuadraticPool(NAMES, HELPS)
    ev.fail_on = {15, 16}  # two search trials (after 5 references, 4 merge baselines, 3 greedy soups)
    runner = StudyRunner(spec_for(tmp_path, n_trials=18), ev, progress=False)
    runner.run()
    rows = trial_rows(runner.study)
    assert sum(r.state == "COMPLETE" for r in rows) == 18
    assert [r.error for r in rows if r.state == "FAIL"] == ["RuntimeError: CUDA out of memory (simulated)"] * 2


def test_too_many_failures_stop_the_study(tmp_path):
    ev = QuadraticPool(NAMES, HELPS)
    ev.fail_on = set(range(10, 100))
    with pytest.raises(StudyFailed, match="out of memory"):
        StudyRunner(spec_for(tmp_path, n_trials=30, max_failures=3), ev, progress=False).run()


def test_resuming_with_a_different_pool_is_refused(tmp_path):
    StudyRunner(spec_for(tmp_path, n_trials=10), QuadraticPool(NAMES, HELPS), progress=False).run()
    other = spec_for(tmp_path, n_trials=10, method="ties")
    with pytest.raises(SpecError, match="different method"):
        StudyRunner(other, QuadraticPool(NAMES, HELPS), progress=False)


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp"])
def test_other_samplers_complete(tmp_path, sampler):
    runner = StudyRunner(spec_for(tmp_path, sampler=sampler, n_trials=13), QuadraticPool(NAMES, HELPS), progress=False)
    front = runner.run()
    assert len(runner.study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 13
    assert front["trials"]


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "dare_linear"])
def test_every_method_space_runs_and_records_its_parameters(tmp_path, method):
    runner = StudyRunner(spec_for(tmp_path, method=method, n_trials=15), QuadraticPool(NAMES, HELPS), progress=False)
    runner.run()
    search = [r for r in trial_rows(runner.study) if r.kind == "search"]
    assert search and all(r.candidate["method"] == method for r in search)
    if method != "task_arithmetic":
        assert all(0.1 <= r.candidate["density"] <= 1.0 for r in search)


def test_normalization_expert_base_and_lower_is_better():
    dens = {"acc": 0.8, "ppl": 10.0, "raw": None}
    out = normalize({"acc": 0.4, "ppl": 20.0, "raw": 3.0}, dens, {"acc": True, "ppl": False, "raw": True})
    assert out == {"acc": 0.5, "ppl": 0.5, "raw": 3.0}


def test_expert_is_the_best_single_checkpoint_per_task(tmp_path):
    ev = QuadraticPool(NAMES, HELPS)
    runner = StudyRunner(spec_for(tmp_path, n_trials=10), ev, progress=False)
    runner.run()
    singles = [r for r in trial_rows(runner.study) if r.label.startswith("checkpoint:")]
    for t in ("x", "y"):
        assert max(r.normalized[t] for r in singles) == pytest.approx(1.0)
    base = runner.study.user_attrs["references"]["base"]
    for r in singles:
        assert r.normalized["z"] == pytest.approx(r.raw["z"] / base["z"])


def test_non_dominated_and_hypervolume_small_cases():
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4], [0.5, 0.5]])
    assert non_dominated(pts).tolist() == [True, True, True, False, True]
    # A point on an axis of the reference point (0, 0) adds no volume.
    assert hypervolume(pts[:3]) == pytest.approx(0.25)
    strips = np.array([[1.0, 0.2], [0.2, 1.0], [0.5, 0.5]])
    assert hypervolume(strips) == pytest.approx(0.2 + 0.2 - 0.04 + 0.09)


@pytest.mark.parametrize("bad,msg", [
    ({"search": {"method": "slerp"}}, "search.method"),
    ({"search": {"sampler": "bayes"}}, "search.sampler"),
    ({"search": {"n_trials": 0}}, "n_trials"),
    ({"pool": {"checkpoints": []}}, "pool.checkpoints"),
    ({"pool": {"checkpoints": [{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]}}, "used twice"),
    ({"search": {"method": "ties"}, "pool": {"checkpoints": [{"name": "a", "path": "/x"}, {"name": "b", "path": "/y"}]}}, "needs pool.base"),
    ({"suite": {"tasks": [{"task": "x", "split": "held_out"}]}, "pool": {"checkpoints": [{"name": "a", "path": "/x"}, {"name": "b", "path": "/y"}]}}, "normalized by the base"),
    ({"search": {"weight_range": [1, 0]}}, "weight_range"),
    ({"typo_field": 1}, "typo_field"),
])
def test_spec_errors_are_clear(bad, msg):
    data = {
        "name": "s",
        "pool": {"base": "/b", "checkpoints": [{"name": "a", "path": "/x"}, {"name": "b", "path": "/y"}]},
        "suite": {"tasks": [{"task": "x"}]},
    }
    for key, value in bad.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) and key != "pool" else value
    with pytest.raises(SpecError, match=msg):
        parse_spec(data)


@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_multi_fidelity_prunes_weak_trials_and_keeps_them_off_the_front(tmp_path, pruner):
    ev = QuadraticPool(NAMES, HELPS, k=2.0)
    runner = StudyRunner(spec_for(tmp_path, n_trials=40, pruner=pruner, fidelities=[0.25, 0.5, 1.0]), ev, progress=False)
    front = runner.run()
    rows = trial_rows(runner.study)
    pruned = [r for r in rows if r.state == "PRUNED"]
    done = [r for r in rows if r.state == "COMPLETE"]
    assert pruned and len(pruned) + len(done) == 40  # pruned trials use budget
    assert not {r.number for r in pruned} & set(front["trials"])
    # Partial scores are kept, recorded with the fidelity they were measured at.
    assert all(r.raw and r.objective is not None for r in pruned)
    states = {t.number: t for t in runner.study.get_trials()}
    assert all(states[r.number].user_attrs["fidelity"] < 1 for r in pruned)
    assert all(states[r.number].user_attrs.get("fidelity", 1.0) == 1.0 for r in done)
    assert set(ev.fidelities) == {0.25, 0.5, 1.0}
    # Still finds a better merge than every baseline.
    assert best(runner.study).objective > max(r.objective for r in done if r.kind == "baseline")


def test_pruner_needs_a_single_objective_sampler():
    with pytest.raises(SpecError, match="single-objective"):
        spec_for("/tmp", sampler="nsga2", pruner="hyperband")
    with pytest.raises(SpecError, match="fidelities"):
        spec_for("/tmp", pruner="hyperband", fidelities=[0.5, 0.25, 1.0])


def test_greedy_soup_picks_the_known_best_soup(tmp_path):
    """Every task wants the even mix of a and b: a is best alone (it is a little closer), b
    joins, c and d only hurt and stay out. Resuming re-evaluates none of it."""
    targets = dict.fromkeys(["x", "y", "z"], [0.55, 0.45, 0.0, 0.0])
    runner = StudyRunner(spec_for(tmp_path, n_trials=14), QuadraticPool(NAMES, targets, k=2.0), progress=False)
    runner.prepare()
    rows = {r.label: r for r in trial_rows(runner.study) if r.label.startswith("greedy")}
    assert list(rows) == ["greedy soup +b", "greedy soup +c", "greedy soup +d"]  # best single first: a
    assert rows["greedy soup +b"].candidate["weights"] == {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}
    assert rows["greedy soup +c"].candidate["weights"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}
    # c was refused, so d is tried with the soup {a, b}, not {a, b, c}
    assert rows["greedy soup +d"].candidate["weights"] == {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0}
    best = max(rows.values(), key=lambda r: r.objective)
    assert best.label == "greedy soup +b" and best.kind == "baseline"
    ev = QuadraticPool(NAMES, targets, k=2.0)
    StudyRunner(spec_for(tmp_path, n_trials=14), ev, progress=False).prepare()
    assert ev.calls == []
