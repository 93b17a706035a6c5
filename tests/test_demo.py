"""The demo pool builder and `mergeopt demo`, on a scaled-down pool (seconds, not minutes)."""

import functools
import json

from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

import evaluators.demo.pool as demo_pool
from evaluators.demo.tasks import SKILLS, is_eval, training_text
from evaluators.pool.validation import validate_pool
from service.cli.demo import run_demo


def test_pool_builds_loads_and_is_reused(tmp_path):
    pool = demo_pool.build_demo_pool(tmp_path / "pool", progress=False, steps_scale=0.02, n_docs=10)
    info = validate_pool(pool.checkpoints, pool.base)
    assert len(info.names) == len(demo_pool.RECIPES) and info.fingerprint()["n_params"] > 0
    tok = AutoTokenizer.from_pretrained(pool.base)
    assert tok.decode(tok.encode("12+34=46", add_special_tokens=False)) == "12+34=46"
    assert AutoModelForCausalLM.from_pretrained(pool.checkpoints[0][1]) is not None
    names = {t["task"] for t in pool.tasks}
    assert names <= set(TaskManager(include_path=str(pool.include_path), include_defaults=False).all_tasks)
    assert [t["split"] for t in pool.tasks].count("held_out") == 1
    # Evaluation prompts are never training prompts.
    for t in pool.tasks:
        rows = [json.loads(line) for line in (pool.include_path / f"{t['task']}.jsonl").read_text().splitlines()]
        assert len(rows) == 10 and all(is_eval(r["prompt"]) for r in rows)
        assert all(len(set(r["choices"])) == 4 for r in rows)
    import random

    assert not any(is_eval(p) for p, _ in training_text(random.Random(0), dict.fromkeys(SKILLS, 1.0), 500))
    weights = pool.checkpoints[0][1] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = demo_pool.build_demo_pool(tmp_path / "pool", progress=False, steps_scale=0.02, n_docs=10)
    assert again == pool and weights.stat().st_mtime_ns == mtime  # reused, not retrained


def test_demo_runs_and_reports_honestly(tmp_path, monkeypatch, capsys):
    small = functools.partial(demo_pool.build_demo_pool, steps_scale=0.02, n_docs=10)
    monkeypatch.setattr(demo_pool, "build_demo_pool", lambda root, **kw: small(root, **kw))
    assert run_demo(tmp_path, n_trials=24, progress=False) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "hypervolume" in out and "wall time" in out
    assert "Pareto front on VALIDATION documents" in out and "verdict on validation documents" in out
    assert "best merge: trial" in out or "no merge is significantly better" in out
    assert (tmp_path / "front.png").stat().st_size > 10_000
    assert run_demo(tmp_path, n_trials=24, progress=False) == 0  # resumes: nothing left to do
    assert "[3/3]" in capsys.readouterr().out
