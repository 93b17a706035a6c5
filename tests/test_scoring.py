"""lm-eval scoring of the resident model: task types, metric names and directions, limit and
few-shot, all equal to lm-eval's own simple_evaluate on the same weights."""

import math

import pytest

from contract.merge import MergeSpec
from evaluators.engine import MergeEvaluator
from evaluators.scoring.splits import prefix
from evaluators.scoring.suite_scorer import SuiteError, SuiteScorer, TaskRequest
from optimizer.stats import DocScores

from tinypool import make_extra_tasks, make_pool, make_tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    pool = make_pool(root / "pool", n=2, noise=0.3)
    include, _ = make_tasks(root)
    make_extra_tasks(root)
    return pool, include


def lm_eval_reference(model, tokenizer, include, task, metric, **kw):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
        tasks=[task], task_manager=TaskManager(include_path=str(include), include_defaults=False),
        bootstrap_iters=0, **kw,
    )
    return res["results"][task][metric]


def test_generation_perplexity_fewshot_and_limit_match_lm_eval(setup):
    pool, include = setup
    requests = [
        TaskRequest("tiny_add", "acc,none"),
        TaskRequest("tiny_gen", "exact_match,none", num_fewshot=2),
        TaskRequest("tiny_ppl", "word_perplexity,none"),
    ]
    ev = MergeEvaluator(pool["checkpoints"], pool["base"], requests, include, limit=6, batch_size=4, device="cpu")
    scores = ev.evaluate(MergeSpec(method="ties", weights={"ckpt0": 0.7, "ckpt1": 0.4}, density=0.5))
    assert ev.directions == {"tiny_add": True, "tiny_gen": True, "tiny_ppl": False}
    assert scores["tiny_ppl"] > 1.0
    model, tok = ev.model.model, ev.tokenizer
    assert math.isclose(scores["tiny_add"], lm_eval_reference(model, tok, include, "tiny_add", "acc,none", limit=6))
    assert math.isclose(scores["tiny_gen"], lm_eval_reference(model, tok, include, "tiny_gen", "exact_match,none", limit=6, num_fewshot=2))
    assert math.isclose(scores["tiny_ppl"], lm_eval_reference(model, tok, include, "tiny_ppl", "word_perplexity,none", limit=6), rel_tol=1e-9)
    # The same scorer scores the next candidate without rebuilding its tasks.
    task_dict = ev.scorer.task_dict
    instances = {name: list(t.instances) for name, t in ev.scorer.tasks.items()}
    again = ev.evaluate(MergeSpec(method="linear", weights={"ckpt0": 1.0, "ckpt1": 0.0}))
    assert ev.scorer.task_dict is task_dict and again != scores
    # Requests were reused (same Instance objects), and the scores still equal lm-eval's own.
    assert all(t.instances == instances[name] and all(a is b for a, b in zip(t.instances, instances[name], strict=True))
               for name, t in ev.scorer.tasks.items())
    assert math.isclose(again["tiny_add"], lm_eval_reference(model, tok, include, "tiny_add", "acc,none", limit=6))
    assert math.isclose(again["tiny_gen"], lm_eval_reference(model, tok, include, "tiny_gen", "exact_match,none", limit=6, num_fewshot=2))
    assert math.isclose(again["tiny_ppl"], lm_eval_reference(model, tok, include, "tiny_ppl", "word_perplexity,none", limit=6), rel_tol=1e-9)
    # Each full-fidelity score comes with lm-eval's per-document values behind it (for the
    # noise-aware recommendation): they aggregate back to the very score, task by task.
    docs = ev.last_documents
    assert {t: d["aggregation"] for t, d in docs.items()} == {"tiny_add": "mean", "tiny_gen": "mean",
                                                              "tiny_ppl": "weighted_perplexity"}
    for task, d in docs.items():
        assert len(d["values"]) == 6 and d["score"] == again[task]
        assert math.isclose(DocScores(d["values"], d["aggregation"]).score, again[task], rel_tol=1e-9)
    # A low-fidelity rung scores a prefix of the documents: half of limit=6 is lm-eval's limit=3.
    half = ev.evaluate(MergeSpec(method="linear", weights={"ckpt0": 1.0, "ckpt1": 0.0}), 0.5)
    assert math.isclose(half["tiny_add"], lm_eval_reference(model, tok, include, "tiny_add", "acc,none", limit=3))
    assert ev.last_documents == {}  # a partial rung: no per-document values to pair
    assert [len(prefix(ev.scorer.splits['tiny_add'].search, f)) for f in (1.0, 0.5, 0.25)] == [6, 3, 1]


def test_other_metric_names_and_unknowns(setup):
    pool, include = setup
    with pytest.raises(SuiteError, match="unknown lm-eval task 'nope'"):
        SuiteScorer([TaskRequest("nope")], include)
    with pytest.raises(SuiteError, match="include_path"):
        SuiteScorer([TaskRequest("tiny_add")], include / "missing")
    ev = MergeEvaluator(pool["checkpoints"], None, [TaskRequest("tiny_add", "f1,none")], include, device="cpu")
    with pytest.raises(SuiteError, match=r"no metric 'f1,none' \(available: \['acc,none'\]\)"):
        ev.evaluate(MergeSpec(weights={"ckpt0": 1.0, "ckpt1": 1.0}))
    bpb = MergeEvaluator(pool["checkpoints"], None, [TaskRequest("tiny_ppl", "bits_per_byte,none")], include, device="cpu")
    assert bpb.evaluate(MergeSpec(weights={"ckpt0": 1.0, "ckpt1": 1.0}))["tiny_ppl"] > 0
    assert bpb.directions == {"tiny_ppl": False}
