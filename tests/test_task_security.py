"""Task definitions are code (issue 11, findings 1, 4 and 7), each attack reproduced end to end.

A suite's task YAMLs are read once, under budgets, by lm-eval's own loader class; the merged
config (includes followed) is checked and is what lm-eval builds the tasks from; templates render
sandboxed; Python runs only from MERGEOPT_TRUSTED_TASK_ROOTS. Registration goes through POST
/v1/suites and /v1/studies (4xx with a reason); "at use" is a worker setting the study up after
the files changed."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jinja2
import lm_eval.utils
import pytest
import yaml
from fastapi.testclient import TestClient
from servicekit import AUTH, make_assets, settings_for

from contract.merge import MergeSpec
from evaluators.engine import MergeEvaluator
from evaluators.scoring.suite_scorer import SuiteError, SuiteScorer, TaskRequest
from evaluators.scoring.task_files import TaskFileRefused
from service.api.app import create_app
from service.worker.runtime import Worker

from tinypool import make_tasks

TRUST = "MERGEOPT_TRUSTED_TASK_ROOTS"


@pytest.fixture(scope="module")
def sec(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasksec")
    outside = tmp_path_factory.mktemp("tasksec-outside")
    assets = make_assets(root)
    (root / "trusted").mkdir()
    (outside / "secret.jsonl").write_text('{"q": "1+1=", "choices": ["2", "3"], "label": 0}\n')
    # Python outside the roots that leaves a mark wherever it runs.
    (outside / "evil.py").write_text(f"import pathlib\npathlib.Path({str(outside / 'RAN')!r}).write_text('ran')\n"
                                     "def process_docs(dataset):\n    return dataset\n")
    settings = settings_for(root, f"sqlite:///{root}/sec.db").model_copy(
        update={"trusted_task_roots": [(root / "trusted").resolve()]})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield {"c": c, "root": root, "outside": outside, "a": assets, "settings": settings}
    assert not (outside / "RAN").exists()


def folder_with(sec, edit, *, under: str = "", name: str | None = None) -> Path:
    """A copy of the tiny task folder with ``edit`` applied to tiny_add.yaml's text."""
    tasks = Path(sec["a"]["suite"]["include_path"])
    folder = sec["root"] / under / (name or f"tasks-{uuid.uuid4().hex[:8]}")
    shutil.copytree(tasks, folder)
    yml = folder / "tiny_add.yaml"
    yml.write_text(edit(yml.read_text()))
    return folder


def data_files(sec, line: str):
    """An edit replacing tiny_add's data files by ``line`` (YAML under ``dataset_kwargs:``)."""
    def edit(text: str) -> str:
        head, _, rest = text.partition("dataset_kwargs:\n")
        return head + "dataset_kwargs:\n" + line + rest[rest.index("test_split"):]
    return edit


def suite_body(sec, folder: Path) -> dict:
    return {**sec["a"]["suite"], "include_path": str(folder)}


def refused(sec, folder: Path, status: int, *words: str) -> str:
    """POST /v1/suites and an inline suite in POST /v1/studies: both refused with ``words``."""
    c = sec["c"]
    r = c.post("/v1/suites", json={"name": f"s-{uuid.uuid4().hex[:6]}", **suite_body(sec, folder)}, headers=AUTH)
    assert r.status_code == status and all(w in r.json()["detail"] for w in words), r.text
    body = {"name": f"st-{uuid.uuid4().hex[:6]}", "pool": sec["a"]["pool"], "suite": suite_body(sec, folder),
            "search": {"n_trials": 12}}
    r2 = c.post("/v1/studies", json=body, headers=AUTH)
    assert r2.status_code == status and r2.json() == r.json(), r2.text
    return r.json()["detail"]


def registered(sec, folder: Path) -> None:
    r = sec["c"].post("/v1/suites", json={"name": f"ok-{uuid.uuid4().hex[:6]}", **suite_body(sec, folder)}, headers=AUTH)
    assert r.status_code == 201, r.text


@contextlib.contextmanager
def own_service(sec, tmp_path):
    """An API on a database of its own, so that a worker picks only this test's studies."""
    settings = sec["settings"].model_copy(update={"database_url": f"sqlite:///{tmp_path}/own.db"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c, settings


def study_on(c, sec, folder: Path) -> str:
    body = {"name": f"st-{uuid.uuid4().hex[:6]}", "pool": sec["a"]["pool"], "suite": suite_body(sec, folder),
            "search": {"n_trials": 12}}
    r = c.post("/v1/studies", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()["name"]


# ------------------------------------------------------------------------------ finding 1: templates

def payload(hit: Path) -> str:
    return "{{ cycler.__init__.__globals__.os.system('id > " + str(hit) + "') }}{{q}}"


def test_template_injection_never_runs_on_a_real_scoring_path(sec, tmp_path):
    """The SSTI payload in doc_to_text. Under lm-eval's own Jinja environment it runs a command;
    here the task registers (a template is not refused, it renders sandboxed) and scoring it on
    a tiny model, in process and through a worker, fails with the sandbox's reason: F never
    appears."""
    live = tmp_path / "live"
    jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(payload(live)).render(q="1+1=")
    assert live.exists()  # the payload is real

    hit = tmp_path / "F"
    folder = folder_with(sec, lambda t: t.replace("doc_to_text: '{{q}}'", f'doc_to_text: "{payload(hit)}"'))
    registered(sec, folder)
    pool = sec["a"]["pool"]
    checkpoints = [(c["name"], c["path"]) for c in pool["checkpoints"]]
    with pytest.raises(SuiteError, match="unsafe"):
        ev = MergeEvaluator(checkpoints, pool["base"], [TaskRequest("tiny_add")], folder, device="cpu",
                            roots=[sec["root"]])
        ev.evaluate(MergeSpec(weights={n: 1.0 for n, _ in checkpoints}))
    # Every render lm-eval makes goes through the sandbox: its apply_template and its env.
    for render in (lambda: lm_eval.utils.apply_template(payload(hit), {"q": "x"}),
                   lambda: lm_eval.utils.env.from_string(payload(hit)).render(q="x")):
        with pytest.raises(jinja2.exceptions.SecurityError):
            render()
    with own_service(sec, tmp_path) as (c, settings):
        name = study_on(c, sec, folder)
        assert Worker(settings, worker_id="w").run_once()
        study = c.get(f"/v1/studies/{name}").json()
    assert study["state"] == "failed" and "unsafe" in study["error"], study
    assert not hit.exists()


def test_every_process_renders_sandboxed(tmp_path):
    """The API, a worker and `mergeopt run` (service.studies.runs) each sandbox lm-eval's templates
    before they read a task: fresh interpreters, nothing else imported, then the call every one of
    them makes first (registration checks the names; an evaluator's scorer builds the tasks)."""
    include, _ = make_tasks(tmp_path)
    probe = ("import {}, lm_eval.utils as u, jinja2.sandbox as s; from evaluators.scoring.suite_scorer import check_task_names; "
             f"check_task_names(['tiny_add'], {str(include)!r}); "
             "print(isinstance(u.env, s.ImmutableSandboxedEnvironment))")
    runs = {m: subprocess.Popen([sys.executable, "-c", probe.format(m)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
            for m in ("service.api.app", "service.worker.runtime", "service.studies.runs")}
    for module, run in runs.items():
        out, err = run.communicate(timeout=180)
        assert out.strip() == "True", (module, err[-2000:])  # the sandbox (task templates: BoundedSandbox)


# ------------------------------------------------------------------------------ finding 1: Python

def code_cases(sec) -> dict[str, tuple]:
    evil = sec["outside"] / "evil"
    return {
        "absolute !function": (f"process_docs: !function {evil}.process_docs\n", "'!function"),
        "relative !function": ("process_docs: !function utils.process_docs\n", "'!function utils.process_docs' runs Python"),
        "class task": ("class: !function utils.Task\n", "'!function utils.Task' runs Python"),
        "class without a tag": ("class: utils.Task\n", "'class:' makes a Python task"),
        "metric HF evaluate loads as code": (f"  - metric: {evil}.py\n", "HF evaluate would load it as code"),
        "hf_evaluate": ("  - metric: exact_match\n    hf_evaluate: true\n", "with hf_evaluate: HF evaluate loads it as code"),
    }


def with_line(line: str):
    def edit(text: str) -> str:
        if line.startswith("  - metric"):
            return text.replace("metric_list:\n", "metric_list:\n" + line)
        return text + line
    return edit


def test_python_outside_the_trusted_roots_is_refused_at_registration(sec):
    for what, (line, reason) in code_cases(sec).items():
        folder = folder_with(sec, with_line(line))
        (folder / "utils.py").write_text(f"import pathlib\npathlib.Path({str(sec['outside'] / 'RAN')!r}).write_text('x')\n"
                                         "def process_docs(d):\n    return d\nclass Task:\n    pass\n")
        detail = refused(sec, folder, 403, reason, "tiny_add.yaml")
        assert TRUST in detail, (what, detail)
    # Under a trusted root, an absolute !function still may not import Python from elsewhere.
    folder = folder_with(sec, with_line(f"process_docs: !function {sec['outside'] / 'evil'}.process_docs\n"), under="trusted")
    refused(sec, folder, 403, f"imports {sec['outside'] / 'evil.py'}")
    # A task outside the trusted root may not borrow a trusted YAML's !function by including it.
    shared = sec["root"] / "trusted" / f"shared-{uuid.uuid4().hex[:6]}"
    shared.mkdir()
    (shared / "_template").write_text("process_docs: !function utils.process_docs\n")
    (shared / "utils.py").write_text("def process_docs(d):\n    return d\n")
    folder = folder_with(sec, lambda t: f"include: {shared / '_template'}\n" + t)
    refused(sec, folder, 403, "tiny_add.yaml", "'!function utils.process_docs' runs Python")
    assert not (sec["outside"] / "RAN").exists()


def test_a_function_under_a_trusted_root_runs(sec, tmp_path):
    """lm-eval's ``!function utils.process_docs`` beside the YAML, in a folder under the trusted
    root: registered, imported as lm-eval imports it, and applied (8 of 12 documents) in
    process and by a worker that sets the study up and runs a trial. The same folder anywhere
    else is refused."""
    ran = tmp_path / "ran"
    folder = folder_with(sec, with_line("process_docs: !function utils.process_docs\n"), under="trusted")
    (folder / "utils.py").write_text(f"import pathlib\ndef process_docs(dataset):\n"
                                     f"    pathlib.Path({str(ran)!r}).write_text('ran')\n"
                                     "    return dataset.select(range(8))\n")
    registered(sec, folder)
    assert not ran.exists()  # registration checks the tag, it imports nothing
    trusted = sec["settings"].trusted_task_roots
    scorer = SuiteScorer([TaskRequest("tiny_add")], folder, roots=[sec["root"]], trusted=trusted)
    assert len(scorer.tasks["tiny_add"].eval_docs) == 8 and ran.exists()
    with pytest.raises(TaskFileRefused, match="runs Python"):
        SuiteScorer([TaskRequest("tiny_add")], folder, roots=[sec["root"]], trusted=[])
    with own_service(sec, tmp_path) as (c, settings):
        name = study_on(c, sec, folder)
        ran.unlink()
        assert Worker(settings, worker_id="w").run_once()
        study = c.get(f"/v1/studies/{name}").json()
    assert study["state"] == "running" and study["error"] is None and study["progress"]["completed"] >= 1, study
    assert ran.exists()


# ------------------------------------------------------------------------------ finding 4: guard bypasses

def old_guard_view(data: bytes):
    """What the guard before this change parsed: the bytes decoded as UTF-8 by itself."""
    try:
        return yaml.safe_load(data.decode("utf-8", errors="replace"))
    except yaml.YAMLError:
        return None


def test_utf16_yaml_is_read_as_lm_eval_reads_it(sec):
    """The old guard decoded the bytes as UTF-8 itself, saw garbage and skipped the file, while
    lm-eval's loader reads the UTF-16 BOM and loads the task. Now the bytes go to lm-eval's
    loader class: a UTF-16 task pointing outside is refused; a harmless one is a task."""
    outside = sec["outside"] / "secret.jsonl"
    folder = folder_with(sec, data_files(sec, f"  data_files:\n    test: {outside}\n"))
    yml = folder / "tiny_add.yaml"
    yml.write_bytes(yml.read_text().encode("utf-16"))
    assert not isinstance(old_guard_view(yml.read_bytes()), dict)  # the old guard skipped it
    assert isinstance(yaml.load(yml.read_bytes(), Loader=yaml.SafeLoader), dict)  # lm-eval loads it
    refused(sec, folder, 403, "tiny_add.yaml", "outside the allowed roots")
    harmless = folder_with(sec, lambda t: t)
    (harmless / "tiny_add.yaml").write_bytes((harmless / "tiny_add.yaml").read_text().encode("utf-16"))
    registered(sec, harmless)


def test_an_include_chain_to_data_outside_is_refused(sec):
    """tiny_add.yaml includes _one (no .yaml: never indexed, never read by the old guard), which
    includes a YAML outside the task folder (inside the roots) that points data outside."""
    elsewhere = sec["root"] / f"elsewhere-{uuid.uuid4().hex[:6]}"
    elsewhere.mkdir()
    (elsewhere / "_two.yml").write_text(f"dataset_kwargs:\n  data_files:\n    test: {sec['outside'] / 'secret.jsonl'}\n")
    folder = folder_with(sec, lambda t: "include: _one\n" + t[: t.index("dataset_kwargs")] + t[t.index("test_split"):])
    (folder / "_one").write_text(f"include: {elsewhere / '_two.yml'}\n")
    refused(sec, folder, 403, "tiny_add.yaml", "secret.jsonl", "outside the allowed roots")
    # The same chain ending inside the roots is a task.
    (elsewhere / "_two.yml").write_text(f"dataset_kwargs:\n  data_files:\n    test: {folder / 'tiny_add.jsonl'}\n")
    registered(sec, folder)


def test_a_glob_matching_a_nested_symlink_is_refused(sec):
    """data_files: a ``**`` glob inside the roots; `datasets` expands it to a link two levels
    down that leads outside. The pattern itself is inside: each match is checked."""
    folder = folder_with(sec, lambda t: t)
    data = folder / "data"
    (data / "sub").mkdir(parents=True)
    shutil.copy(folder / "tiny_add.jsonl", data / "tiny_add.jsonl")
    yml = folder / "tiny_add.yaml"
    yml.write_text(data_files(sec, f"  data_files:\n    test: {data}/**/*.jsonl\n")(yml.read_text()))
    registered(sec, folder)  # only real files inside: fine
    (data / "sub" / "leak.jsonl").symlink_to(sec["outside"] / "secret.jsonl")
    refused(sec, folder, 403, "tiny_add.yaml", "leak.jsonl", "outside the allowed roots")


def test_a_local_dataset_folder_is_checked_file_by_file(sec):
    """dataset_path naming a folder: `datasets` reads every data file in it and its README's
    configs, whose data_files are relative to the folder. A link in it, or a README config
    reaching out with ../, is refused; the plain folder is fine."""
    def local(folder: Path) -> Path:
        data = folder / "local"
        data.mkdir()
        shutil.copy(folder / "tiny_add.jsonl", data / "test.jsonl")
        yml = folder / "tiny_add.yaml"
        text = yml.read_text()
        yml.write_text(text[: text.index("dataset_path")] + f"dataset_path: {data}\n" + text[text.index("test_split"):])
        return data

    folder = folder_with(sec, lambda t: t)
    data = local(folder)
    registered(sec, folder)
    (data / "more.jsonl").symlink_to(sec["outside"] / "secret.jsonl")
    refused(sec, folder, 403, "tiny_add.yaml", "more.jsonl", "outside the allowed roots")
    folder = folder_with(sec, lambda t: t)
    data = local(folder)
    up = os.path.relpath(sec["outside"] / "secret.jsonl", data)
    (data / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n"
                                    f"    path: {up}\n---\n")
    refused(sec, folder, 403, "tiny_add.yaml", "secret.jsonl", "outside the allowed roots")


def test_a_cache_dir_outside_the_roots_is_refused(sec):
    cache = sec["outside"] / "cache"
    folder = folder_with(sec, lambda t: t.replace("dataset_kwargs:\n", f"dataset_kwargs:\n  cache_dir: {cache}\n"))
    refused(sec, folder, 403, "tiny_add.yaml", "cache_dir", "outside the allowed roots")
    assert not cache.exists()


@pytest.mark.parametrize("url", ["file://{secret}", "zip://x.jsonl::file://{secret}", "hf://datasets/org/name/x.jsonl"])
def test_data_file_urls_are_refused(sec, url):
    url = url.format(secret=sec["outside"] / "secret.jsonl")
    folder = folder_with(sec, data_files(sec, f"  data_files:\n    test: '{url}'\n"))
    refused(sec, folder, 403, "tiny_add.yaml", "is a URL")


def test_redirecting_dataset_options_are_refused(sec):
    for key in ("storage_options: {}", f"base_path: {sec['outside']}", "download_config: {}"):
        folder = folder_with(sec, lambda t, k=key: t.replace("dataset_kwargs:\n", f"dataset_kwargs:\n  {k}\n"))
        refused(sec, folder, 403, "tiny_add.yaml", f"dataset_kwargs.{key.split(':')[0]} is not allowed")


def edited_after_registration(sec, tmp_path, edit) -> dict:
    """Register a clean suite and a study on it, change tiny_add.yaml, let a worker set it up."""
    folder = folder_with(sec, lambda t: t)
    with own_service(sec, tmp_path) as (c, settings):
        name = study_on(c, sec, folder)
        yml = folder / "tiny_add.yaml"
        yml.write_text(edit(yml.read_text()))
        assert Worker(settings, worker_id="w").run_once()
        return c.get(f"/v1/studies/{name}").json()


def test_a_function_added_after_registration_fails_the_study(sec, tmp_path):
    evil = sec["outside"] / "evil"
    study = edited_after_registration(sec, tmp_path, with_line(f"process_docs: !function {evil}.process_docs\n"))
    assert study["state"] == "failed" and study["progress"]["completed"] == 0, study
    assert f"'!function {evil}.process_docs' runs Python" in study["error"] and TRUST in study["error"], study
    assert not (sec["outside"] / "RAN").exists()


def test_data_moved_outside_after_registration_fails_the_study(sec, tmp_path):
    secret = sec["outside"] / "secret.jsonl"
    study = edited_after_registration(sec, tmp_path, data_files(sec, f"  data_files:\n    test: {secret}\n"))
    assert study["state"] == "failed" and "outside the allowed roots" in study["error"], study
    assert "tiny_add.yaml" in study["error"] and str(secret) in study["error"], study


# ------------------------------------------------------------------------------ finding 7: alias bomb

# Where the old guard walked every string (data_files): 9**10 of them, ~25 min at its 0.4 us each.
BOMB = "\n".join(["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
                 + ["dataset_kwargs:", "  data_files:", "    test: *a9"]) + "\n"


@pytest.mark.parametrize("bomb", [BOMB, "loop: &loop [*loop]\n", "deep: " + "[" * 200 + "]" * 200 + "\n",
                                  "big: '" + "a" * (2 << 20) + "'\n"],
                         ids=["billion-laughs", "recursive-alias", "deep", "2-MiB"])
def test_yaml_bombs_are_refused_quickly(sec, bomb):
    """9**10 (~3.5e9) nodes once expanded, a list that contains itself, nesting or bytes past the
    budget: refused with a reason in well under a second (the old guard walked every expanded
    string)."""
    registered(sec, folder_with(sec, lambda t: t))  # lm-eval's first import is not the bomb's cost
    folder = folder_with(sec, lambda t: t + bomb)
    t0 = time.perf_counter()
    r = sec["c"].post("/v1/suites", json={"name": "bomb", **suite_body(sec, folder)}, headers=AUTH)
    assert time.perf_counter() - t0 < 1.0
    assert r.status_code in (403, 422) and "tiny_add.yaml" in r.json()["detail"], r.text
    assert any(w in r.json()["detail"] for w in ("aliases are expanded", "recursive YAML alias", "nested", "larger than")), r.text
