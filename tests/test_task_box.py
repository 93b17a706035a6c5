"""Client task code in a box (issue 20, finding 3): templates that hang or blow up memory used to
run in the worker's own thread (no cancel reached them; other studies waited forever). Now a
study's tasks are built and every template rendered in a child process with CPU, memory and
wall-clock limits, killed on cancel; the worker only replays the child's renders."""

from __future__ import annotations

import multiprocessing
import threading
import time

import jinja2
import lm_eval.utils
import pytest
from servicekit import AUTH, wait_for
from test_task_security import folder_with, own_service, sec, study_on  # noqa: F401 (fixture)

from contract.merge import MergeSpec
from evaluators.engine import MergeEvaluator
from evaluators.scoring.suite_scorer import TaskRequest
from evaluators.security import render_memo
from evaluators.security.task_box import BoxLimits, TaskBoxStopped
from service.worker.runtime import Worker

HANG = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{q}}"
DOUBLING = "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{q}}"


def with_text(template: str):
    return lambda t: t.replace("doc_to_text: '{{q}}'", f'doc_to_text: "{template}"')


def run_in_thread(fn) -> dict:
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


@pytest.mark.parametrize(("template", "reason"), [(HANG, "CPU"), (DOUBLING, "memory"),
                                                  ("{{ 'x' * 200000000 }}{{q}}", "unsafe")],
                         ids=["nested-loops", "doubling-string", "200-MB-product"])
def test_a_template_that_hangs_or_blows_up_fails_its_study_and_the_worker_goes_on(sec, tmp_path, template, reason):  # noqa: F811
    """The old worker rendered these in its own thread: the loops never returned (cancel, other
    studies and shutdown waited forever), the doubling took every byte. Now the child hits its
    limit, the study fails saying which, and the same worker then sets up the next study."""
    bad, good = folder_with(sec, with_text(template)), folder_with(sec, lambda t: t)
    with own_service(sec, tmp_path) as (c, settings):
        settings = settings.model_copy(update={"task_cpu_s": 3, "task_wall_s": 60, "task_memory_mb": 1024})
        first = study_on(c, sec, bad)
        second = study_on(c, sec, good)
        worker = Worker(settings, worker_id="w")
        t0 = time.monotonic()
        run = run_in_thread(worker.run_once)
        run["thread"].join(90)
        assert not run["thread"].is_alive(), "the worker is stuck in the template"
        assert time.monotonic() - t0 < 60 and run.get("value") is True, run
        study = c.get(f"/v1/studies/{first}").json()
        assert study["state"] == "failed" and reason in study["error"], study
        assert worker.run_once()
        assert c.get(f"/v1/studies/{second}").json()["state"] == "running"
    assert not multiprocessing.active_children()


def test_cancel_kills_the_task_build(sec, tmp_path):  # noqa: F811
    """A cancel while the tasks are being built (a template that would run for hours): the child
    is killed within seconds, the worker is free, the study stays cancelled (not failed)."""
    folder = folder_with(sec, with_text(HANG))
    with own_service(sec, tmp_path) as (c, settings):
        name = study_on(c, sec, folder)
        worker = Worker(settings, worker_id="w")  # default limits: 900 CPU seconds
        run = run_in_thread(worker.run_once)
        wait_for(lambda: multiprocessing.active_children(), timeout=60, every=0.1)
        time.sleep(1.0)
        assert c.post(f"/v1/studies/{name}/cancel", headers=AUTH).status_code == 200
        t0 = time.monotonic()
        run["thread"].join(30)
        assert not run["thread"].is_alive() and time.monotonic() - t0 < 10
        assert isinstance(run.get("error"), TaskBoxStopped), run
        assert not multiprocessing.active_children()
        assert c.get(f"/v1/studies/{name}").json()["state"] == "cancelled"


def test_the_worker_replays_renders_and_renders_nothing_itself(sec):  # noqa: F811
    """A boxed evaluator scores as before; every render in the worker comes from the child's
    record, and one the child never made (another document) is refused, not rendered."""
    pool = sec["a"]["pool"]
    checkpoints = [(c["name"], c["path"]) for c in pool["checkpoints"]]
    include = sec["a"]["suite"]["include_path"]
    ev = MergeEvaluator(checkpoints, pool["base"], [TaskRequest("tiny_add")], include, device="cpu",
                        roots=[sec["root"].resolve()], task_box=BoxLimits(cpu_s=60, wall_s=120))
    assert ev.scorer.replay is not None and ev.scorer.replay.renders
    scores = ev.evaluate(MergeSpec(weights={n: 1.0 for n, _ in checkpoints}))
    assert 0.0 <= scores["tiny_add"] <= 1.0
    with render_memo.using(ev.scorer.replay), pytest.raises(jinja2.exceptions.SecurityError, match="outside"):
        lm_eval.utils.apply_template("{{q}}", {"q": "a document the child never saw", "choices": [], "label": 0})


def test_a_client_regex_filter_on_model_outputs_is_bounded():
    """What stays in the worker while scoring: lm-eval's regex filters run the task's pattern on
    every generation. ``(a|aa)+$`` on 60 a's and a b backtracks ~10^12 steps under `re`; now
    each match has a timeout and the trial fails instead of the worker hanging."""
    from lm_eval.filters.extraction import RegexFilter

    from evaluators.security.lm_eval_guard import guard_lm_eval

    guard_lm_eval()  # what the worker's evaluator set-up installs (lm_eval_guard.py)
    assert RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)").apply([["so #### 42", "no"]], [{}]) == [["42", "[invalid]"]]
    run = run_in_thread(lambda: RegexFilter(regex_pattern=r"(a|aa)+$").apply([["a" * 60 + "b"]], [{}]))
    run["thread"].join(60)
    assert not run["thread"].is_alive() and isinstance(run.get("error"), TimeoutError), run
