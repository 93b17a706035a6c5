"""The template sandbox (evaluators/security/sandbox.py) as lm-eval's renderer: installed explicitly at
set-up (evaluators/security/lm_eval_guard.py), not by importing scoring.py; lm-eval's own rendering path
goes through it; and set-up fails closed if lm-eval renders through anything else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[1]

PAYLOAD = "{{ cycler.__init__.__globals__.os.system('true') }}{{ q }}"


def test_importing_scoring_installs_nothing_and_set_up_installs_the_sandbox():
    """A fresh interpreter: importing scoring.py leaves lm-eval as it is; the set-up call
    (guard_lm_eval, made by MergeEvaluator, SuiteScorer, check_task_names and the task box)
    installs the sandbox, and a second call changes nothing."""
    probe = ("import evaluators.scoring.suite_scorer, lm_eval.utils as u; from evaluators.security import sandbox; "
             "from evaluators.security.lm_eval_guard import guard_lm_eval; before = sandbox.installed(); "
             "guard_lm_eval(); env = u.env; guard_lm_eval(); "
             "print(before, sandbox.installed(), u.env is env)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.stdout.split() == ["False", "True", "True"], run.stderr[-2000:]


def test_lm_eval_renders_a_tasks_template_through_the_sandbox(tmp_path):
    """lm-eval's own path: a ConfigurableTask built from a config renders its doc_to_text through
    the sandbox, which refuses the template escape (and renders a plain template)."""
    from lm_eval.api.task import ConfigurableTask

    from evaluators.security.lm_eval_guard import guard_lm_eval

    guard_lm_eval()
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"q": "1+1=", "choices": ["2", "3"], "label": 0}) + "\n")

    def task(doc_to_text: str) -> ConfigurableTask:
        return ConfigurableTask(config={
            "task": "sandbox_probe", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": doc_to_text,
            "doc_to_target": "{{ label }}", "doc_to_choice": "{{ choices }}"})

    with pytest.raises(jinja2.exceptions.SecurityError, match="unsafe"):
        task(PAYLOAD)  # lm-eval renders the first document's prompt as it builds the task
    plain = task("{{ q }}")
    assert plain.doc_to_text(plain.test_docs()[0]) == "1+1="
    plain.config.doc_to_text = PAYLOAD
    with pytest.raises(jinja2.exceptions.SecurityError, match="unsafe"):
        plain.doc_to_text(plain.test_docs()[0])


def test_set_up_fails_closed_when_lm_eval_renders_elsewhere(monkeypatch):
    """Were lm-eval to render through anything but the sandbox (a name bound at import, say),
    set-up refuses to go on rather than render a client template unsandboxed."""
    import lm_eval.utils

    from evaluators.security.lm_eval_guard import LmEvalUnguarded, guard_lm_eval

    guard_lm_eval()
    monkeypatch.setattr(lm_eval.utils, "apply_template", lambda template, doc: "plain")
    with pytest.raises(LmEvalUnguarded, match="sandbox"):
        guard_lm_eval()
