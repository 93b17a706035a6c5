"""The recommendation is noise-aware (optimizer/recommend.py): the search's best trial replaces
set-up's best only when it leads on the search documents beyond their noise (paired over the
same documents); a lead that the highest of many noisy scores has by luck keeps set-up's."""

from __future__ import annotations

import pytest

from contract.merge import MergeSpec
from optimizer.loop import StudyRunner
from optimizer.recommend import RULE_BEST, RULE_NOISE, RULE_WITHIN, best_on_search, recommend
from optimizer.records import trial_rows
from optimizer.scorer import TrialScorer
from optimizer.spec import parse_spec
from optimizer.stats import DocScores

from fakes import NoisyPool, QuadraticPool

NAMES = ["a", "b", "c", "d"]


def spec(tmp_path, name, **search):
    return parse_spec({
        "name": name,
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
        "suite": {"tasks": [{"task": "x"}, {"task": "y"}]},
        "search": {"n_trials": 40, **search},
        "storage": f"sqlite:///{tmp_path}/{name}.db",
    })


def flat(p):
    """Every merge and every checkpoint is equally good: any lead is the documents' noise."""
    return {"x": 0.7, "y": 0.6}


def run(tmp_path, name, ev, **search):
    runner = StudyRunner(spec(tmp_path, name, **search), ev, progress=False)
    runner.run()
    rows = trial_rows(runner.study)
    return rows, recommend(runner.spec, runner.study.user_attrs, rows)


def test_a_lucky_lead_keeps_set_up_and_the_trials_store_their_documents(tmp_path):
    lucky, kept = 0, 0
    for seed in range(6):
        ev = NoisyPool(NAMES, flat, n_search=150, shared=0.5, seed=seed)
        rows, rec = run(tmp_path, f"flat{seed}", ev, seed=seed)
        done = [r for r in rows if r.state == "COMPLETE"]
        assert all(r.search_docs and r.search_docs["x"]["n"] == 150 for r in done)  # every trial, set-up too
        if rec.search is not None and rec.search is best_on_search(done):  # the plain argmax picks search
            lucky += 1
            kept += rec.rule == RULE_WITHIN
            assert rec.row is rec.setup and rec.bound <= 0 < rec.comparison.diff
            assert rec.comparison.lo < rec.bound  # the one-sided 95% bound is inside the two-sided interval
            assert "within their noise" in rec.text()
    # The highest of ~30 noisy search scores beats set-up's ~12 most of the time; never for real.
    assert lucky >= 3, lucky
    assert kept >= lucky - 1, (kept, lucky)


def test_a_real_lead_is_recommended(tmp_path):
    def truth(p):  # the half-half soup of a and b is best; set-up's soups are uniform over 3+ or 1
        loss = 2 * float((p[0] - 0.5) ** 2 + (p[1] - 0.5) ** 2 + p[2] ** 2 + p[3] ** 2)
        return {"x": 0.9 - loss, "y": 0.9 - loss}

    ev = NoisyPool(NAMES, truth, n_search=400, shared=0.9, seed=1)
    rows, rec = run(tmp_path, "gain", ev, n_trials=60, greedy_soup=False)
    assert rec.rule == RULE_NOISE and rec.row is rec.search and rec.bound > 0
    assert rec.comparison.diff == pytest.approx(rec.search.objective - rec.setup.objective, abs=1e-9)
    assert "beyond their noise" in rec.text() and rec.to_json()["trial"] == rec.search.number


def test_exact_scores_recommend_the_best_of_all(tmp_path):
    ev = QuadraticPool(NAMES, {"x": [0.5, 0.5, 0, 0], "y": [0.5, 0.5, 0, 0]})
    rows, rec = run(tmp_path, "exact", ev, n_trials=30)
    done = [r for r in rows if r.state == "COMPLETE"]
    assert all(r.search_docs is None for r in done)  # nothing per document to resample
    assert rec.rule == RULE_BEST and rec.row is best_on_search(done) and rec.comparison is None


class Liar(NoisyPool):
    """Reports per-document values that do not add up to its scores."""

    def evaluate(self, c, fidelity=1.0):
        out = super().evaluate(c, fidelity)
        for d in self.last_documents.values():
            d["values"] = [1.0 - v for v in d["values"]]
        return out


def test_per_document_values_that_do_not_aggregate_to_the_score_are_not_kept():
    s = parse_spec({"name": "l", "pool": {"checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
                    "suite": {"tasks": [{"task": "x"}, {"task": "y"}]}})
    uniform = MergeSpec(weights=dict.fromkeys(NAMES, 1.0))
    truth = lambda p: {"x": 0.3, "y": 0.6}  # noqa: E731
    for ev, kept in ((NoisyPool(NAMES, truth), True), (Liar(NAMES, truth), False)):
        scorer = TrialScorer(ev, s, 1)
        raw, _ = scorer.evaluate(uniform)
        assert (scorer.last_docs is not None) is kept
        if kept:
            assert DocScores.from_json(scorer.last_docs["x"]).score == pytest.approx(raw["x"])
        assert scorer.evaluate(uniform, 0.5) and scorer.last_docs is None  # a partial rung: none
