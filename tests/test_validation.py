"""Honest numbers: the search sees only search documents; every reported score is on validation
documents, with intervals that cover the truth, and verdicts that are paired and significant.

The fake evaluator (fakes.NoisyPool) knows each candidate's true accuracy and draws 0/1
document outcomes around it, so bias and coverage are measured against the truth."""

import time

import numpy as np
import optuna
import pytest

from contract.merge import MergeSpec
from optimizer import attrs as K
from optimizer import validation as V
from optimizer.loop import Step, StudyRunner
from optimizer.records import stored_front, trial_rows
from optimizer.spec import parse_spec
from optimizer.stats import Bootstrap, DocScores, TaskTerm, compare, raw_interval
from optimizer.verdict import study_verdict

from fakes import NoisyPool

NAMES = ["a", "b", "c"]
TASKS = ["x", "y", "z"]


def trade_off(p):
    """Each checkpoint is best at one task; mixtures trade them off (true accuracies)."""
    return {"x": 0.45 + 0.3 * p[0] - 0.1 * p[2], "y": 0.5 + 0.25 * p[1], "z": 0.55 + 0.1 * p[2]}


def flat(p):
    return dict.fromkeys(TASKS, 0.6)


def big_win(p):
    """Mixtures are far better than any single checkpoint (and the base)."""
    gain = 0.35 * (1 - float(np.sum(p**2)))
    return dict.fromkeys(TASKS, 0.4 + gain)


def spec(tmp_path, name, *, n_trials=16, sampler="random", normalize="none", seed=0, baselines=False, **suite):
    return parse_spec({
        "name": name,
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
        "suite": {"tasks": [{"task": t, "normalize": normalize} for t in TASKS], **suite},
        "search": {"n_trials": n_trials, "sampler": sampler, "seed": seed, "baselines": baselines},
        "storage": f"sqlite:///{tmp_path}/{name}.db",
    })


def run(tmp_path, truth, seed, base_score=0.5, **kw):
    ev = NoisyPool(NAMES, truth, seed=seed, base_score=base_score)
    runner = StudyRunner(spec(tmp_path, f"s{seed}", seed=seed, **kw), ev, progress=False)
    runner.run()
    return runner, ev


def pick(rows):
    search = [r for r in rows if r.kind == "search" and r.state == "COMPLETE" and r.validation]
    return max(search, key=lambda r: r.objective)


@pytest.mark.slow
def test_search_front_overstates_and_validation_front_is_unbiased(tmp_path):
    search_err, valid_err = [], []
    for seed in range(16):
        runner, ev = run(tmp_path, trade_off, seed)
        best = pick(trial_rows(runner.study))
        truth = np.mean(list(ev.true_scores(MergeSpec.model_validate(best.candidate)).values()))
        search_err.append(best.objective - truth)
        valid_err.append(best.validation["objective"]["value"] - truth)
        # The sampler never saw a validation score: no trial's values are validation numbers.
        # (random optimizes one objective per task: its values are the search documents' scores)
        assert all(t.values is None or t.values == [t.user_attrs["normalized"][k] for k in TASKS]
                   for t in runner.study.trials)
    se = lambda e: np.std(e, ddof=1) / np.sqrt(len(e))  # noqa: E731
    assert np.mean(search_err) > 3 * se(search_err)  # the winner's curse, measured
    assert abs(np.mean(valid_err)) < 2.5 * se(valid_err)  # unbiased within its standard error
    assert np.mean(search_err) > np.mean(valid_err) + 0.01


def _coverage_draw(truth_fn, pick_w, seed, normalize):
    """One simulated study's reported numbers for a fixed pick: fresh validation documents for
    the pick and its references (each task's expert: the checkpoint best on it)."""
    ev = NoisyPool(NAMES, truth_fn, seed=seed, n_validation=150)
    cand = MergeSpec(method="linear", weights=dict(zip(NAMES, pick_w, strict=True)), normalize=True)
    docs = V.to_docs(ev.validate(cand), TASKS)
    terms, true_norm = [], {}
    for t in TASKS:
        ref = None
        true = ev.true_scores(cand)[t]
        if normalize:
            expert = max(NAMES, key=lambda n, t=t: truth_fn(np.eye(3)[NAMES.index(n)])[t])
            ecand = MergeSpec(method="linear", weights={n: float(n == expert) for n in NAMES}, normalize=True)
            ref = V.to_docs(ev.validate(ecand), TASKS)[t]
            true = true / ev.true_scores(ecand)[t]
        terms.append(TaskTerm(t, 1.0, True, ref))
        true_norm[t] = true
    summary = Bootstrap(terms, {t: 150 for t in TASKS}, seed=seed).summary(docs)
    return summary, true_norm, ev.true_scores(cand)


@pytest.mark.parametrize("normalize", [False, True])
def test_intervals_cover_the_truth_in_200_simulated_studies(normalize):
    covered = {"objective": 0, "task": 0, "raw": 0}
    for seed in range(200):
        s, true_norm, true_raw = _coverage_draw(trade_off, [0.5, 0.3, 0.2], seed, normalize)
        lo, hi = s["objective"]["lo"], s["objective"]["hi"]
        covered["objective"] += lo <= np.mean(list(true_norm.values())) <= hi
        covered["task"] += s["normalized"]["x"]["lo"] <= true_norm["x"] <= s["normalized"]["x"]["hi"]
        covered["raw"] += s["raw"]["y"]["lo"] <= true_raw["y"] <= s["raw"]["y"]["hi"]
    assert all(c >= 180 for c in covered.values()), covered  # >= 90% of 200 for 95% intervals


def test_paired_verdict_is_not_significant_when_the_truth_is_equal():
    """Two different models of the same true accuracy: the paired 95% interval of their
    difference holds 0 in at least 90% of 200 studies."""
    hits = 0
    for seed in range(200):
        ev = NoisyPool(NAMES, flat, seed=seed)
        a = V.to_docs(ev.validate(MergeSpec(method="linear", weights={"a": 1, "b": 1, "c": 0})), TASKS)
        b = V.to_docs(ev.validate(MergeSpec(method="linear", weights={"a": 0, "b": 1, "c": 1})), TASKS)
        boot = Bootstrap([TaskTerm(t, 1.0, True, None) for t in TASKS], {t: 150 for t in TASKS}, seed=seed)
        hits += not compare(boot, a, b).significant
    assert hits >= 180, hits


def test_verdicts_say_not_significant_at_zero_and_beats_when_large(tmp_path):
    runner, _ = run(tmp_path, flat, 3, normalize="expert", baselines=True, n_trials=20, base_score=0.4)
    v = study_verdict(runner.study, trial_rows(runner.study))
    assert v["text"].splitlines()[1].startswith("no merge is significantly better than the best single model")
    assert v["text"].splitlines()[2].startswith("no merge is significantly better than the best merge baseline")
    by_role = {c["against"]: c for c in v["comparisons"]}
    assert not by_role["best single model"]["significant"] and not by_role["best merge baseline"]["significant"]
    assert by_role["base model"]["significant"]  # the base is truly worse (0.4 vs 0.6)
    runner, _ = run(tmp_path, big_win, 4, normalize="expert", baselines=False, n_trials=20)
    rows = trial_rows(runner.study)
    v = study_verdict(runner.study, rows)
    head = v["comparisons"][0]
    assert head["significant"] and head["diff"] > 0.1 and head["lo"] > 0
    assert v["text"].splitlines()[1].startswith(f"best merge: trial {v['pick']} beats the best single model")
    assert v["pick"] == pick(rows).number


def test_references_baselines_and_front_trials_are_validated_once(tmp_path):
    runner, ev = run(tmp_path, trade_off, 5, normalize="expert", baselines=True, n_trials=18)
    rows = {r.number: r for r in trial_rows(runner.study)}
    attrs = runner.study.user_attrs
    validated = set(V.stored(attrs))
    assert {n for n, r in rows.items() if r.kind == "baseline"} <= validated  # singles, base, merge baselines
    assert set(attrs["front"]["trials"]) <= validated
    assert len(ev.validated) == len(validated)  # nothing scored twice
    base = next(r for r in rows.values() if r.label == "base")
    assert base.validation["objective"]["value"] > 0
    # The reported front is over validation scores; the search front stays available.
    vfront, sfront = stored_front(runner.study), stored_front(runner.study, "search")
    assert vfront["split"] == "validation" and sfront["split"] == "search"
    assert set(vfront["trials"]) <= validated
    # Normalization on validation documents uses the experts chosen on search documents.
    assert attrs[V.A_VREFS] == {"x": 0, "y": 1, "z": 2}
    assert attrs["noise"]["tasks"]["x"]["documents"] == 150


def test_validation_off_warns_and_reports_search_scores(tmp_path, caplog):
    runner, _ = run(tmp_path, trade_off, 6, validation=0, n_trials=10)
    assert "biased upward" in caplog.text
    assert stored_front(runner.study)["split"] == "search"
    assert not V.stored(runner.study.user_attrs)


def test_doc_scores_round_trip_and_intervals():
    bits = DocScores(np.array([1, 0, 1, 1, 0, 1, 1, 1.0]))
    assert DocScores.from_json(bits.to_json()).values.tolist() == bits.values.tolist()
    assert "bits" in bits.to_json()
    ppl = DocScores(np.array([[-3.0, 2], [-5.0, 3], [-1.0, 1]]), "weighted_perplexity")
    assert np.isclose(ppl.score, np.exp(9 / 6))
    assert DocScores.from_json(ppl.to_json()).score == pytest.approx(ppl.score)
    e = raw_interval(DocScores(np.ones(50)))  # Wilson: no zero-width interval at 100%
    assert e.value == 1.0 and e.lo < 0.95 and e.hi == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no intervals for aggregation 'bleu'"):
        DocScores(np.ones(3), "bleu")


def test_validation_claims_survive_a_dead_worker_and_a_resume(tmp_path, storage_url, study_name):
    """A live claim by another worker is left alone; once its heartbeat is older than the grace
    period the work is taken over; a resumed study neither redoes nor loses any validation."""
    s = spec(tmp_path, "x", n_trials=14, normalize="expert").model_copy(update={"name": study_name, "storage": storage_url})
    ev = NoisyPool(NAMES, trade_off, seed=7)
    runner = StudyRunner(s, ev, progress=False)
    runner.prepare()
    while True:  # run search trials until one joins the front and waits for its validation
        assert runner.step() is not Step.DONE
        attrs = runner.study.user_attrs
        waiting = [n for n in attrs["front"]["trials"] if V.val_key(n) not in attrs]
        if waiting:
            break
    target = waiting[0]
    runner.study.set_user_attr(V.claim_key(target), {"by": "other-worker", "at": time.time()})
    assert runner.validation.step() is None  # busy elsewhere: the search goes on meanwhile
    assert V.val_key(target) not in runner.study.user_attrs
    runner.study.set_user_attr(V.claim_key(target), {"by": "other-worker", "at": time.time() - 3600})
    assert runner.validation.step() is Step.VALIDATED
    assert "summary" in runner.study.user_attrs[V.val_key(target)]
    before = dict(V.stored(runner.study.user_attrs))
    resumed = NoisyPool(NAMES, trade_off, seed=7)
    again = StudyRunner(s, resumed, progress=False)
    again.run()
    after = V.stored(again.study.user_attrs)
    assert all(after[n] == e for n, e in before.items())  # nothing lost or rewritten
    assert len(resumed.validated) == len(after) - len(before)  # nothing redone
    assert set(again.study.user_attrs["front"]["trials"]) <= set(after)
    optuna.delete_study(study_name=study_name, storage=storage_url)


CHILD = """
import sys, pathlib, time
sys.path.insert(0, {tests!r})
from fakes import NoisyPool
from optimizer.loop import StudyRunner
from optimizer.spec import parse_spec
from optimizer.storage import open_storage
import test_validation as T

class Blocking(NoisyPool):
    def validate(self, c):
        if len(self.validated) == {block_at}:  # a search trial's validation: die in the middle of it
            pathlib.Path({flag!r}).write_text("validating")
            time.sleep(600)
        return super().validate(c)

spec = parse_spec({spec!r})
StudyRunner(spec, Blocking(T.NAMES, T.trade_off, seed=7), progress=False,
            storage=open_storage(spec.storage, heartbeat_s=1, grace_s=2)).run()
"""


def test_validation_survives_a_sigkilled_process_and_a_resume(tmp_path, storage_url, study_name):
    """A process is SIGKILLed while it validates a search trial; a resumed run takes the work
    over once the claim's heartbeat is 2 s old, and neither redoes nor loses any validation."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from optimizer.storage import open_storage

    s = spec(tmp_path, "x", n_trials=14, normalize="expert").model_copy(update={"name": study_name, "storage": storage_url})
    flag = tmp_path / "validating"
    code = CHILD.format(tests=str(Path(__file__).parent), block_at=7, flag=str(flag), spec=s.model_dump(mode="json"))
    child = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert child.poll() is None and time.time() < deadline, "the child died before validating"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    storage = open_storage(storage_url, heartbeat_s=1, grace_s=2)
    study = optuna.load_study(study_name=study_name, storage=storage)
    before = V.stored(study.user_attrs)
    claimed = [int(k.split(":")[1]) for k in study.user_attrs if k.startswith(K.VAL_CLAIM)]
    orphan = [n for n in claimed if n not in before]
    assert len(before) == 7 and len(orphan) == 1  # one claimed and never finished
    time.sleep(2.5)  # the dead claimant's heartbeat is now older than the grace period
    resumed = NoisyPool(NAMES, trade_off, seed=7)
    runner = StudyRunner(s, resumed, progress=False, storage=storage)
    runner.run()
    after = V.stored(runner.study.user_attrs)
    assert all(after[n] == e for n, e in before.items())  # nothing lost or rewritten
    assert orphan[0] in after and "summary" in after[orphan[0]]
    assert len(resumed.validated) == len(after) - len(before)  # only the missing work was done
    optuna.delete_study(study_name=study_name, storage=storage_url)
