"""Stored errors (issue 20, finding 4): a study's or trial's error is shown to anyone who may
read studies, so it names the file and the kind of failure and never quotes a file; it is
always storable (no NUL: PostgreSQL refused the text, and the study was retried forever at
top priority); and a study whose error cannot be stored still fails."""

from __future__ import annotations

import pytest
from conftest import scratch_pg_database
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError
from test_staging_security import text_task
from test_task_security import folder_with, own_service, sec, study_on  # noqa: F401 (fixture)

from service.api.app import create_app
from service.worker.errors import MAX_ERROR_CHARS, clean
from service.worker.runtime import Worker


def nul_task_name(text: str) -> str:
    return text.replace("task: tiny_add", 'task: "tiny\\0add"')


def test_a_nul_byte_in_a_setup_error_fails_the_study_on_postgresql(sec):  # noqa: F811
    """The task YAML is edited after registration to name a task with a NUL byte: set-up fails
    with "unknown task ... (tasks found: tiny<NUL>add ...)". The old worker's UPDATE was refused
    by PostgreSQL and the study stayed queued, picked first on every loop."""
    folder = folder_with(sec, lambda t: t)
    with scratch_pg_database("mergeopt_err") as url:
        settings = sec["settings"].model_copy(update={"database_url": url})
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            name = study_on(c, sec, folder)
            (folder / "tiny_add.yaml").write_text(nul_task_name((folder / "tiny_add.yaml").read_text()))
            worker = Worker(settings, worker_id="w")
            assert worker.run_once()
            study = c.get(f"/v1/studies/{name}").json()
            assert study["state"] == "failed" and "unknown lm-eval task" in study["error"], study
            assert "\x00" not in study["error"] and "tiny?add" in study["error"], study
            assert not worker.run_once()  # nothing left to pick: it is not retried
            worker.storage.engine.dispose()
            worker.sessions.kw["bind"].dispose()


def test_a_study_whose_error_cannot_be_stored_still_fails(sec, tmp_path, monkeypatch):  # noqa: F811
    """Whatever the database refuses in the error, the study is failed with a fixed reason."""
    folder = folder_with(sec, lambda t: t)
    with own_service(sec, tmp_path) as (c, settings):
        name = study_on(c, sec, folder)
        (folder / "tiny_add.yaml").write_text(nul_task_name((folder / "tiny_add.yaml").read_text()))
        real = Worker._set_state

        def refusing(self, study_id, state, *, only_from, error=None, **extra):
            if error and "could not be stored" not in error:
                raise DataError("UPDATE studies ...", {}, ValueError("the database refuses this text"))
            return real(self, study_id, state, only_from=only_from, error=error, **extra)

        monkeypatch.setattr(Worker, "_set_state", refusing)
        worker = Worker(settings, worker_id="w")
        assert worker.run_once()
        study = c.get(f"/v1/studies/{name}").json()
    assert study["state"] == "failed" and "could not be stored (DataError)" in study["error"], study


def test_template_errors_name_the_failure_never_the_document(sec, tmp_path):  # noqa: F811
    """`{{ {}[text] }}` over a data file inside the roots: the old error was "'dict object' has
    no attribute '<the line>'", shown to every reader. Now it says what failed, not what was read."""
    folder, _ = text_task(sec, lines="PRIVATE-LINE-5521 a\nPRIVATE-LINE-5522 b\n")
    with own_service(sec, tmp_path) as (c, settings):
        name = study_on(c, sec, folder)
        assert Worker(settings, worker_id="w").run_once()
        study = c.get(f"/v1/studies/{name}").json()
    assert study["state"] == "failed" and "lacks" in study["error"], study
    assert "PRIVATE-LINE" not in study["error"], study


@pytest.mark.parametrize(("raw", "want"), [("a\x00b", "a?b"), ("x\ud800y", "x?y"), ("line\nnext\tok", "line\nnext\tok")])
def test_clean_makes_any_text_storable(raw, want):
    assert clean(raw) == want
    long = clean("e" * 10 * MAX_ERROR_CHARS)
    assert len(long) == MAX_ERROR_CHARS and long.endswith("(truncated)")
