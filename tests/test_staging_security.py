"""Stage, then use (issue 20, findings 1 and 2): a client file a third-party library reads (task
data, config.json, tokenizer files, generation_config.json) is read once through fileguard into
a private copy, and the library only ever sees that copy. Each test swaps the client's file for
a link to a secret right before the library opens it (the race window the old code had) and
checks that the secret reaches no library, no stored error and no response."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import datasets
import pytest
from servicekit import AUTH
from test_task_security import folder_with, own_service, registered, sec, study_on  # noqa: F401 (fixture)

from service.worker.runtime import Worker

SECRET = "MERGEOPT_TOKENS=s3cr3t-leak-7731"


@pytest.fixture(scope="module")
def secret_file(sec):  # noqa: F811
    path = sec["outside"] / "server.env"
    path.write_text(SECRET + "\nMERGEOPT_DATABASE_URL=postgresql://u:pw@db/x\n")
    return path


def text_task(sec, lines: str = "1+1=\n2+2=\n3+3=\n4+4=\n5+5=\n6+6=\n",  # noqa: F811
              template: str = "{{ {}[text] }}"):
    """A `text` dataset whose template (by default) puts each line into a KeyError (the attack's)."""
    folder = folder_with(sec, lambda t: t)
    data = folder / "lines.txt"
    data.write_text(lines)
    text = (f"task: tiny_add\ndataset_path: text\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{template}\"\n"
            "doc_to_choice: ['a', 'b']\ndoc_to_target: 0\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "tiny_add.yaml").write_text(text)
    return folder, data


def everything_readable(c) -> str:
    """All an anonymous reader gets back about studies and their trials and events."""
    out = [c.get("/v1/studies").text]
    for s in c.get("/v1/studies").json():
        out += [c.get(f"/v1/studies/{s['id']}").text, c.get(f"/v1/studies/{s['id']}/trials").text]
    return "\n".join(out)


def test_a_data_file_swapped_for_a_link_as_datasets_opens_it_leaks_nothing(sec, secret_file, tmp_path, monkeypatch):  # noqa: F811
    """Finding 1: the data file passes every check, then becomes a link to the server's secrets
    the moment the worker calls `datasets`; the template is harmless on the real lines and puts a
    secret line into its error. The old worker read the link and stored the secret as the study's
    error. Now `datasets` is only given staged copies: the study runs, nothing leaks."""
    folder, data = text_task(sec, template="{{ {}[text] if text.startswith('MERGEOPT') else text }}")
    seen: list = []
    real_load = datasets.load_dataset

    def swap_then_load(*args, **kwargs):
        if data.exists() and not data.is_symlink():
            data.unlink()
            data.symlink_to(secret_file)
        seen.append(json.dumps(kwargs.get("data_files"), default=str))
        return real_load(*args, **kwargs)

    with own_service(sec, tmp_path) as (c, settings):
        name = study_on(c, sec, folder)
        monkeypatch.setattr(datasets, "load_dataset", swap_then_load)
        assert Worker(settings, worker_id="w").run_once()
        monkeypatch.undo()
        study = c.get(f"/v1/studies/{name}").json()
        readable = everything_readable(c)
    assert study["state"] == "running" and study["error"] is None, study
    assert "s3cr3t" not in readable
    assert seen and all(str(data) not in s for s in seen), seen  # never the client's own path


def test_a_data_file_missing_at_the_check_is_an_error_not_nothing_to_check(sec, secret_file, tmp_path):  # noqa: F811
    """The old check let a missing data file through ("nothing to check"); the file could then
    appear as a link before `datasets` opened it. Now a missing file fails the study, saying so."""
    folder, data = text_task(sec)
    with own_service(sec, tmp_path) as (c, settings):
        name = study_on(c, sec, folder)
        data.unlink()
        assert Worker(settings, worker_id="w").run_once()
        study = c.get(f"/v1/studies/{name}").json()
    assert study["state"] == "failed" and "lines.txt" in study["error"], study
    assert "no file" in study["error"] or "does not exist" in study["error"], study
    r = sec["c"].post("/v1/suites", json={"name": f"gone-{uuid.uuid4().hex[:6]}", "include_path": str(folder),
                                          "tasks": [{"task": "tiny_add"}]}, headers=AUTH)
    assert r.status_code == 422 and "lines.txt" in r.json()["detail"], r.text


def pool_copy(sec) -> dict:  # noqa: F811
    """The tiny pool copied (so a test may swap its files), as a POST body."""
    pool = sec["a"]["pool"]
    root = sec["root"] / f"pool-{uuid.uuid4().hex[:6]}"
    copy = {"base": str(shutil.copytree(pool["base"], root / "base")), "checkpoints": []}
    for c in pool["checkpoints"]:
        copy["checkpoints"].append({"name": c["name"], "path": str(shutil.copytree(c["path"], root / c["name"]))})
    return copy


def test_a_side_file_swapped_after_guard_tree_is_refused_at_registration(sec, secret_file, monkeypatch):  # noqa: F811
    """Finding 2: registration guarded the folder's links, then read its files without roots; a
    tokenizer file swapped for a link in between was read and its first line echoed in the 422.
    Now every file is opened through the guard: 403, naming the file, and no secret."""
    import service.studies.registry as registry

    pool = pool_copy(sec)
    victim = Path(pool["checkpoints"][1]["path"])
    (victim / "tokenizer.json").unlink()
    (victim / "vocab.txt").write_text("a\nb\n")
    real_guard = registry.guard_tree

    def guard_then_swap(directory, roots, **kw):
        real_guard(directory, roots, **kw)
        if Path(directory) == victim.resolve():
            (victim / "vocab.txt").unlink()
            (victim / "vocab.txt").symlink_to(secret_file)

    monkeypatch.setattr(registry, "guard_tree", guard_then_swap)
    r = sec["c"].post("/v1/pools", json={"name": f"p-{uuid.uuid4().hex[:6]}", **pool}, headers=AUTH)
    assert r.status_code == 403 and "vocab.txt" in r.text and "outside the allowed roots" in r.text, r.text
    assert "s3cr3t" not in r.text


def test_transformers_reads_only_staged_copies_of_config_and_tokenizer(sec, secret_file, tmp_path, monkeypatch):  # noqa: F811
    """Finding 2, in the worker: from_pretrained opened config.json, generation_config.json and
    the tokenizer files by name after fileguard had checked them. Each file is swapped for a
    link to the secret the moment transformers is called: it is given a staged folder, so the
    model and the tokenizer load from the copies and nothing reaches the secret."""
    import transformers

    from evaluators.engine import MergeEvaluator
    from evaluators.scoring.suite_scorer import TaskRequest

    pool = pool_copy(sec)
    base = Path(pool["base"])
    (base / "generation_config.json").write_text(json.dumps({"bos_token_id": 1}))
    given: list[str] = []

    def swapping(real):
        def load(path, *args, **kwargs):
            given.append(str(path))
            for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
                if (base / name).exists() and not (base / name).is_symlink():
                    (base / name).unlink()
                    (base / name).symlink_to(secret_file)
            return real(path, *args, **kwargs)
        return load

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", swapping(cls.from_pretrained))
    checkpoints = [(c["name"], c["path"]) for c in pool["checkpoints"]]
    ev = MergeEvaluator(checkpoints, str(base), [TaskRequest("tiny_add")], sec["a"]["suite"]["include_path"],
                        device="cpu", roots=[sec["root"].resolve()])
    assert len(given) == 2 and all("mergeopt-staged-" in g and str(base) not in g for g in given), given
    assert ev.model.model.config.vocab_size > 0 and ev.tokenizer("1+1=")["input_ids"]
    assert all(not Path(g).exists() for g in given)  # the staged folder is gone once loaded


@pytest.mark.parametrize("how", ["copy", "link"])
def test_a_file_that_cannot_be_read_is_a_staging_error_naming_it_for_copy_and_link(how, tmp_path, monkeypatch):
    import errno

    from evaluators.security import fileguard
    from evaluators.security.staging import Staging, StagingError

    src = tmp_path / "weights.safetensors"
    src.write_bytes(b"secret-bytes")

    def failing_open(path, roots, what):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fileguard, "open_file", failing_open)
    with Staging() as st, pytest.raises(StagingError) as info:
        getattr(st, how)(src, [tmp_path], st.folder() / "x", "weights")
    assert str(info.value) == f"weights {src}: cannot read it (Input/output error)"
    assert "secret" not in str(info.value)
