"""Suites: lm-eval's built-in tasks beside local ones (include_defaults), its index scanned once
per process, and a registered suite keeps its validation split (it was dropped before 0002)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from servicekit import AUTH, make_assets, settings_for

from evaluators.scoring import task_files
from evaluators.scoring.suite_scorer import SuiteError, check_task_names
from service.api.app import create_app


def test_builtin_tasks_beside_local_ones_only_when_asked(tmp_path, monkeypatch):
    a = make_assets(tmp_path)
    include = a["suite"]["include_path"]
    with pytest.raises(SuiteError, match="unknown lm-eval task 'hellaswag'"):
        check_task_names(["tiny_add", "hellaswag"], include)
    task_files.builtin_manager.cache_clear()
    from lm_eval.tasks._index import TaskIndex

    scans = []
    real = TaskIndex.build
    monkeypatch.setattr(TaskIndex, "build", staticmethod(lambda paths, **k: scans.append(list(paths)) or real(paths, **k)))
    manager = check_task_names(["tiny_add", "tiny_sub", "hellaswag", "arc_easy"], include, include_defaults=True)
    assert {"tiny_add", "hellaswag", "arc_easy"} <= set(manager.all_tasks)
    assert manager.task_index["tiny_add"].yaml_path is None  # the suite's: from its checked config
    assert manager.task_index["hellaswag"].yaml_path is not None  # lm-eval's own installed file
    builtin_scans = len([p for p in scans if p])
    check_task_names(["tiny_add", "hellaswag"], include, include_defaults=True)
    check_task_names(["tiny_sub", "arc_easy"], include, include_defaults=True)
    assert len([p for p in scans if p]) == builtin_scans == 1  # scanned once, then shared


def test_builtin_manager_is_built_once():
    first = check_task_names(["hellaswag"], None)
    assert check_task_names(["arc_easy"], None) is first


def test_a_registered_suite_keeps_its_validation_and_include_defaults(tmp_path):
    a = make_assets(tmp_path)
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path}/s.db")
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/suites", json={"name": "s", **a["suite"], "validation": 5, "include_defaults": True}, headers=AUTH)
        assert r.status_code == 201, r.text
        assert r.json()["validation"] == 5 and r.json()["include_defaults"] is True
        pool = c.post("/v1/pools", json={"name": "p", **a["pool"]}, headers=AUTH).json()
        r = c.post("/v1/studies", json={"name": "by-id", "pool_id": pool["id"], "suite_id": "s",
                                        "search": {"n_trials": 12}}, headers=AUTH)
        assert r.status_code == 201, r.text
        inline = c.post("/v1/studies", json={"name": "inline", **a, "suite": {**a["suite"], "validation": 0.25},
                                             "search": {"n_trials": 12}}, headers=AUTH)
        assert inline.status_code == 201, inline.text
        from service.db.models import Study
        from service.db.session import session_factory

        with session_factory(settings.database_url)() as s:
            specs = {row.name: row.spec["suite"] for row in s.query(Study)}
        assert specs["by-id"]["validation"] == 5 and specs["by-id"]["include_defaults"] is True
        assert specs["inline"]["validation"] == 0.25
