"""The search's answer (issue 18): gated weights make single checkpoints and sub-soups regions
of the space, a merge already scored is not scored again, and the recommended merge is the best
of ALL trials on search documents, set-up included, so a study never leaves its user below a
baseline it computed; the verdict says separately whether searching paid."""

from __future__ import annotations

import pytest

from contract.merge import MergeSpec, one_hot
from optimizer.loop import StudyRunner
from optimizer.recommend import recommend
from optimizer.records import stored_front, trial_rows
from optimizer.reuse import candidate_key
from optimizer.space import GATE_MARGIN, SearchSpace
from optimizer.spec import SpecError, parse_spec
from optimizer.verdict import _headline, study_verdict
from service.studies.report import front_table

from fakes import NoisyPool, QuadraticPool

NAMES = ["a", "b", "c", "d"]


def spec(tmp_path, name="s", validation=0, **search):
    return parse_spec({
        "name": name,
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
        "suite": {"tasks": [{"task": "x"}, {"task": "y"}], "validation": validation},
        "search": {"n_trials": 30, **search},
        "storage": f"sqlite:///{tmp_path}/{name}.db",
    })


def test_gated_weights_reach_single_checkpoints_sub_soups_and_the_uniform_soup(tmp_path):
    space = SearchSpace(spec(tmp_path, weights="gated").search, NAMES)
    assert {(d.low, d.high) for d in space.distributions().values()} == {(-1.0, 1.0)}
    w = lambda **p: space.candidate({f"w:{n}": p.get(n, -0.5) for n in NAMES}).weights  # noqa: E731
    assert w(a=0.7) == {"a": 0.7, "b": 0.0, "c": 0.0, "d": 0.0}  # one checkpoint: a whole orthant
    assert w(a=0.4, c=0.4) == {"a": 0.4, "b": 0.0, "c": 0.4, "d": 0.0}  # a sub-soup
    assert len(set(w(a=0.3, b=0.3, c=0.3, d=0.3).values())) == 1  # the uniform soup
    # Every member gated off: the one nearest to joining, alone (not a jump to the uniform average).
    assert w(a=-0.9, b=-0.1, c=-0.4, d=-0.7) == {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0}
    # Set-up trials embed where they are, left-out members a margin below their gate.
    point = space.embed(one_hot(NAMES, "c"))
    assert point == {"w:a": -GATE_MARGIN, "w:b": -GATE_MARGIN, "w:c": 0.5, "w:d": -GATE_MARGIN}
    assert candidate_key(space.candidate(point)) == candidate_key(one_hot(NAMES, "c"))
    soup = MergeSpec(method="linear", weights={"a": 1, "b": 1, "c": 0, "d": 0}, normalize=True)
    assert candidate_key(space.candidate(space.embed(soup))) == candidate_key(soup)


def test_gated_weights_refuse_ranges_they_cannot_mean(tmp_path):
    with pytest.raises(SpecError, match="gated"):
        spec(tmp_path, weights="gated", signed_weights=True)
    with pytest.raises(SpecError, match="gated"):
        spec(tmp_path, weights="gated", weight_range=[0.1, 1.0])


def test_a_merge_already_scored_is_reused_not_evaluated_again(tmp_path):
    # Merging hurts here: the search keeps proposing the best checkpoint alone (gated off others).
    ev = QuadraticPool(NAMES, {"x": [1, 0, 0, 0], "y": [1, 0, 0, 0]}, penalty=0.5)
    runner = StudyRunner(spec(tmp_path, weights="gated", warm_sigma0=0.05, n_trials=40, baselines=False), ev,
                         progress=False)
    runner.run()
    trials = runner.study.get_trials()
    reused = [t for t in trials if "reused_from_trial" in t.user_attrs["timings"]]
    assert reused, "no proposal repeated a scored merge"
    assert len(ev.calls) == len(trials) - len(reused)  # each reused trial cost no evaluation
    by_number = {t.number: t for t in trials}
    for t in reused:
        source = by_number[int(t.user_attrs["timings"]["reused_from_trial"])]
        assert t.user_attrs["raw"] == source.user_attrs["raw"]
        assert candidate_key(MergeSpec.model_validate(t.user_attrs["candidate"])) == \
            candidate_key(MergeSpec.model_validate(source.user_attrs["candidate"]))


def test_randomized_merges_are_never_reused():
    a = MergeSpec(method="dare_ties", weights={"a": 1.0}, density=0.5, seed=1)
    assert candidate_key(a) != candidate_key(a.model_copy(update={"seed": 2}))
    t = MergeSpec(method="ties", weights={"a": 1.0}, density=0.5, seed=1)
    assert candidate_key(t) == candidate_key(t.model_copy(update={"seed": 2}))  # TIES ignores the seed


def test_warm_started_cmaes_takes_its_own_step_and_restarts_the_full_one(tmp_path):
    ev = QuadraticPool(NAMES, {"x": [0.5, 0.5, 0, 0], "y": [0.5, 0.5, 0, 0]})
    runner = StudyRunner(spec(tmp_path, warm_sigma0=0.07, sigma0=0.25), ev, progress=False)
    runner.prepare()
    sampler = runner.study.sampler
    assert sampler._sigma0 == 0.07 and sampler._sigmas == (0.07, 0.25)
    sampler._use(1, None)
    assert sampler._sigma0 == 0.25


def truth_single_best(p):
    """Checkpoint a alone is best by far; every mixture loses."""
    return {"x": 0.85 - 0.5 * float(1 - p[0]), "y": 0.8 - 0.5 * float(1 - p[0])}


def test_the_recommendation_is_the_best_of_all_trials_and_never_below_set_up(tmp_path):
    ev = NoisyPool(NAMES, truth_single_best, n_search=400, n_validation=400, shared=0.5, seed=3)
    # Box weights (the default): a single checkpoint is a corner no search trial hits, so every
    # search trial is a worse mixture (gated weights reach checkpoint a itself: the next test).
    runner = StudyRunner(spec(tmp_path, validation=0.5, n_trials=30), ev, progress=False)
    runner.run()
    rows = trial_rows(runner.study)
    done = [r for r in rows if r.state == "COMPLETE"]
    v = study_verdict(runner.study, rows)
    rec = next(r for r in done if r.number == v["recommended"])
    assert rec.objective == max(r.objective for r in done)
    assert recommend(runner.spec, runner.study.user_attrs, rows).row.number == rec.number
    assert rec.label == "checkpoint:a"  # found by set-up: every search trial is a worse mixture
    assert v["pick"] != rec.number and v["search_paid"] is False
    text = v["text"]
    assert f"recommended merge: trial {rec.number} (set-up: a)" in text
    assert "searching did not pay" in text
    table = front_table(rows, stored_front(runner.study), v)
    marked = [line for line in table.splitlines() if line.startswith(f"{rec.number} *")]
    assert marked, table  # the recommended trial is a row, marked, on the front or below it
    assert "* the recommended merge" in table


def test_with_gated_weights_the_search_reaches_the_best_checkpoint_and_stays_with_it(tmp_path):
    ev = NoisyPool(NAMES, truth_single_best, n_search=400, n_validation=400, shared=0.5, seed=3)
    runner = StudyRunner(spec(tmp_path, validation=0.5, n_trials=30, weights="gated"), ev, progress=False)
    runner.run()
    rows = trial_rows(runner.study)
    search = [r for r in rows if r.kind == "search" and r.state == "COMPLETE"]
    alone = [r for r in search if r.candidate["weights"]["a"] > 0 and sum(r.candidate["weights"].values())
             == r.candidate["weights"]["a"]]
    assert len(alone) >= len(search) // 3, "the search rarely proposed checkpoint a alone"
    v = study_verdict(runner.study, rows)
    rec = next(r for r in rows if r.number == v["recommended"])
    assert rec.candidate["weights"]["a"] >= 0.9 * sum(rec.candidate["weights"].values())  # a, nearly alone
    assert v["search_paid"] is False and "searching did not pay" in v["text"]


def test_searching_paid_when_the_search_finds_a_better_merge(tmp_path):
    def truth(p):  # the half-half soup of a and b is best; set-up's soups are uniform over 3+ or 1
        return {"x": 0.9 - 2 * float((p[0] - 0.5) ** 2 + (p[1] - 0.5) ** 2 + p[2] ** 2 + p[3] ** 2),
                "y": 0.9 - 2 * float((p[0] - 0.5) ** 2 + (p[1] - 0.5) ** 2 + p[2] ** 2 + p[3] ** 2)}

    ev = NoisyPool(NAMES, truth, n_search=400, n_validation=400, shared=0.9, seed=1)
    runner = StudyRunner(spec(tmp_path, validation=0.5, n_trials=60, greedy_soup=False), ev, progress=False)
    runner.run()
    rows = trial_rows(runner.study)
    v = study_verdict(runner.study, rows)
    assert v["recommended"] == v["pick"]  # the search's best is the best of all
    assert v["search_paid"] is True and "searching paid" in v["text"]


def test_a_lead_of_the_other_side_has_its_interval_the_same_way_round():
    class Row:
        def __init__(self, number, label):
            self.number, self.label = number, label

    c = {"diff": -0.375, "lo": -0.7732, "hi": -0.0417, "significant": True}
    line = _headline("best single model", Row(7, "search"), Row(2, "checkpoint:c2"), c)
    assert "beats the search's best merge (trial 7) by +0.3750 (95% CI [+0.0417, +0.7732])" in line


def test_chance_corrected_normalization_scales_by_the_margin_over_guessing(tmp_path):
    from optimizer.normalize import normalize
    from optimizer.stats import Bootstrap, DocScores, TaskTerm

    dens, up = {"add": 0.385, "sort": 0.9}, {"add": True, "sort": True}
    plain = normalize({"add": 0.30, "sort": 0.81}, dens, up)
    fixed = normalize({"add": 0.30, "sort": 0.81}, dens, up, {"add": 0.25, "sort": 0.25})
    assert plain["add"] == pytest.approx(0.30 / 0.385) and fixed["add"] == pytest.approx(0.05 / 0.135)
    assert fixed["sort"] == pytest.approx(0.56 / 0.65)
    # a reference at or below chance has no margin: the plain ratio is kept
    assert normalize({"a": 0.2}, {"a": 0.25}, {"a": True}, {"a": 0.25})["a"] == pytest.approx(0.8)
    # validation documents resample the same formula
    ref = DocScores([1.0] * 27 + [0.0] * 73, "mean")
    model = DocScores([1.0] * 30 + [0.0] * 70, "mean")
    boot = Bootstrap([TaskTerm("add", 1.0, True, ref, 0.25)], {"add": 100})
    value, draws = boot.normalized("add", model)
    assert value == pytest.approx((0.30 - 0.25) / (0.27 - 0.25)) and draws.shape[0] > 100
    # the option is part of the spec; a study stored without it keeps its identity
    s = spec(tmp_path)
    assert "chance" not in s.identity()["tasks"][0]
    with pytest.raises(SpecError):
        parse_spec({**s.model_dump(by_alias=True), "suite": {"tasks": [{"task": "x", "chance": 1.5}]}})
