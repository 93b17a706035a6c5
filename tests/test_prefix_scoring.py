"""Prefix-shared scoring (evaluators/scoring/prefix.py) gives lm-eval's HFLM scores: every
acc/acc_norm decision identical and log-likelihoods within 1e-4 (fp32), on MC with multi-token
endings, 1-token MC, perplexity (rolling windows) and few-shot, at batch sizes 1 and 32, with
left truncation; and it actually shares (fewer tokens through the model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from evaluators.scoring import prefix as prefix_scoring
from evaluators.scoring.prefix import PrefixUnsupported, plan, score
from evaluators.scoring.suite_scorer import SuiteScorer, TaskRequest, _study_hflm
from service.settings import Settings

from tinypool import CHARS, make_tokenizer, tiny_config

TOL = 1e-4
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _mc_yaml(name: str, data: Path, extra: str = "") -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\nfewshot_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
            "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\ntarget_delimiter: ' '\n" + extra +
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    rng = random.Random(0)

    def word(lo, hi):
        return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))

    mc, one, ppl = [], [], []
    for i in range(8):
        stem = word(3, 6)  # endings that share a first word (and one equal to another's prefix)
        choices = [f"{stem} {word(2, 8)}", f"{stem} {word(2, 8)}", word(1, 1), word(4, 12)]
        choices.append(choices[0] + word(1, 3))
        mc.append({"q": " ".join(word(2, 7) for _ in range(rng.randint(3, 9))) + " ?", "choices": choices, "label": i % 5})
        one.append({"q": " ".join(word(2, 7) for _ in range(rng.randint(2, 8))) + " =", "choices": list("abcd"), "label": i % 4})
        ppl.append({"text": " ".join(word(1, 9) for _ in range(rng.randint(3, 30)))})
    for name, rows in (("pfx_mc", mc), ("pfx_one", one), ("pfx_ppl", ppl)):
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "pfx_mc.yaml").write_text(_mc_yaml("pfx_mc", root / "pfx_mc.jsonl"))
    (root / "pfx_one.yaml").write_text(_mc_yaml("pfx_one", root / "pfx_one.jsonl"))
    (root / "pfx_ppl.yaml").write_text(
        f"task: pfx_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'pfx_ppl.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config()).eval()
    with torch.no_grad():  # peaked, not uniform, predictions: near-ties would make acc flaky
        model.lm_head.weight.mul_(30)
    return root, model, make_tokenizer()


def _evaluate(lm, include: Path, task: str, **kw) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(include), include_defaults=False),
                          bootstrap_iters=0, log_samples=True, **kw)
    return out


def _flat(resps) -> list[float]:
    out = []
    for r in resps:
        r = r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], list | tuple) else r
        out.append(float(r[0]) if isinstance(r, list | tuple) else float(r))
    return out


def _count_tokens(model) -> list[int]:
    seen = [0]
    model.model.embed_tokens.register_forward_pre_hook(lambda _m, args: seen.__setitem__(0, seen[0] + args[0].numel()))
    return seen


CASES = [  # task, lm-eval kwargs, max_length (None: the model's 64), batch size
    *[pytest.param(task, kw, length, bs, id=f"{name}-{bs}") for bs in (1, 32) for name, task, kw, length in (
        ("mc", "pfx_mc", {}, None),
        ("mc_fewshot", "pfx_mc", {"num_fewshot": 3}, 256),
        ("one_token", "pfx_one", {"num_fewshot": 2}, None),
        ("perplexity", "pfx_ppl", {}, 16),  # several rolling windows per document
    )],
    # few-shot contexts longer than 64: left truncation, each ending its own window
    pytest.param("pfx_mc", {"num_fewshot": 3}, None, 32, id="mc_truncated-32"),
]


@pytest.mark.parametrize("task,kw,max_length,batch_size", CASES)
def test_scores_equal_lm_eval(setup, task, kw, max_length, batch_size):
    from lm_eval.models.huggingface import HFLM

    include, model, tok = setup
    common = {"pretrained": model, "tokenizer": tok, "batch_size": batch_size, "max_length": max_length}
    ref = _evaluate(HFLM(**common), include, task, **kw)
    ours_lm = _study_hflm()(**common)
    assert ours_lm.prefix_sharing
    shared = _evaluate(ours_lm, include, task, **kw)
    assert ours_lm.prefix_sharing  # still on: the prefix path scored (it turns itself off otherwise)
    ref_s = sorted(ref["samples"][task], key=lambda s: s["doc_id"])
    our_s = sorted(shared["samples"][task], key=lambda s: s["doc_id"])
    assert len(ref_s) == len(our_s) == 8
    metrics = ("acc", "acc_norm") if task != "pfx_ppl" else ("word_perplexity", "bits_per_byte")
    for a, b in zip(ref_s, our_s, strict=True):
        lls_a, lls_b = _flat(a["resps"]), _flat(b["resps"])
        assert len(lls_a) == len(lls_b) and max(abs(x - y) for x, y in zip(lls_a, lls_b, strict=True)) < TOL
        if task != "pfx_ppl":
            assert [m for m in metrics if a[m] != b[m]] == []  # identical decisions per document
            assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]  # is_greedy
    for m in metrics:
        assert shared["results"][task][f"{m},none"] == pytest.approx(ref["results"][task][f"{m},none"], rel=1e-5)


def test_shares_context_forward(setup):
    """Few-shot MC with 5 endings: the model sees far fewer tokens than under HFLM."""
    from lm_eval.models.huggingface import HFLM

    include, model, tok = setup
    seen = _count_tokens(model)
    common = {"pretrained": model, "tokenizer": tok, "batch_size": 32, "max_length": 256}
    _evaluate(HFLM(**common), include, "pfx_mc", num_fewshot=3)
    hflm, seen[0] = seen[0], 0
    _evaluate(_study_hflm()(**common), include, "pfx_mc", num_fewshot=3)
    assert seen[0] < 0.5 * hflm


def _random_requests(rng: random.Random, vocab: int) -> list[tuple[list[int], list[int]]]:
    reqs = []
    for _ in range(9):
        ctx = [rng.randrange(4, vocab) for _ in range(rng.choice([1, 2, 5, 30, 70]))]
        conts = [[rng.randrange(4, vocab) for _ in range(rng.choice([1, 1, 3, 9]))] for _ in range(rng.randint(1, 5))]
        conts.append(conts[0] + [rng.randrange(4, vocab)])  # one ending extends another
        reqs += [(ctx, c) for c in conts] + [(ctx, conts[0])]  # and a duplicate request
    rng.shuffle(reqs)
    return reqs


@pytest.mark.parametrize("attn,mode", [("sdpa", "tree"), ("eager", "tree"), ("sdpa", "cache")])
def test_token_level_equals_hflm(setup, attn, mode):
    """Straight against HFLM._loglikelihood_tokens: contexts of 1 token, truncated windows,
    endings that extend others, duplicates; both attention implementations."""
    from lm_eval.models.huggingface import HFLM

    _, model, tok = setup
    model.config._attn_implementation = attn
    try:
        reqs = _random_requests(random.Random(1), len(CHARS))
        for bs in (1, 7):
            lm = HFLM(pretrained=model, tokenizer=tok, batch_size=bs, max_length=48)
            ref = lm._loglikelihood_tokens([(None, c, k) for c, k in reqs])
            ours = score(model, reqs, batch_size=bs, max_length=48, device="cpu", mode=mode)
            assert [g for _, g in ours] == [g for _, g in ref]
            assert max(abs(a - b) for (a, _), (b, _) in zip(ours, ref, strict=True)) < TOL
    finally:
        model.config._attn_implementation = "sdpa"


def test_plan_groups_by_shared_window():
    ctx = [5, 6, 7, 8]
    groups = plan([(ctx, [9, 10]), (ctx, [11]), (ctx, [9, 10]), ([5], [6, 7]), ([1, 2, 3], [4]), ([1, 2, 3], [5])], 100)
    shared = [g for g in groups if g.prefix]
    assert [g.prefix for g in shared] == [(5, 6, 7)]  # the context but its last token, run once
    assert sorted(r.tokens for r in shared[0].rows) == [(8,), (8, 9)]  # distinct endings, duplicate merged
    plain = sorted(g.rows[0].tokens for g in groups if not g.prefix)
    assert plain == [(1, 2, 3), (5, 6)]  # 1-token endings of one context: one plain row
    # Left truncation as HFLM: windows (ctx + cont)[-(L+1):][:-1]; differing windows do not share.
    trunc = plan([([1, 2, 3, 4, 5], [6, 7]), ([1, 2, 3, 4, 5], [8])], 4)
    assert sorted(g.rows[0].tokens for g in trunc) == [(2, 3, 4, 5), (3, 4, 5, 6)]


def test_unsupported_model_falls_back_to_lm_eval(setup, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    _, model, tok = setup
    reqs = [(None, [5, 6, 7], [8, 9]), (None, [5, 6, 7], [10, 11])]
    lm = _study_hflm()(pretrained=model, tokenizer=tok, batch_size=4)

    def refuse(*_a, **_k):
        raise PrefixUnsupported("test")

    monkeypatch.setattr(prefix_scoring, "score", refuse)
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=4)._loglikelihood_tokens(reqs)
    assert lm._loglikelihood_tokens(reqs) == ref and lm.prefix_sharing is False


def test_suite_scorer_switch(setup, monkeypatch):
    include, model, tok = setup
    calls = []
    real = prefix_scoring.score
    monkeypatch.setattr(prefix_scoring, "score", lambda *a, **k: calls.append(1) or real(*a, **k))
    on = SuiteScorer([TaskRequest("pfx_mc", "acc_norm,none")], include, batch_size=8)
    off = SuiteScorer([TaskRequest("pfx_mc", "acc_norm,none")], include, batch_size=8, prefix_sharing=False)
    got_on = on.score(model, tok)
    assert calls and on.prefix_sharing
    calls.clear()
    assert off.score(model, tok) == got_on and not calls
    monkeypatch.setenv("MERGEOPT_PREFIX_SHARING", "0")
    options = Settings().evaluator_options()  # as the service passes it to the engine
    assert SuiteScorer([TaskRequest("pfx_mc")], include, prefix_sharing=options.prefix_sharing).prefix_sharing is False
