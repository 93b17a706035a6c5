"""Defaults (issue 20, findings 5 and 10c): the service's own settings and secrets are never
readable through a pool or a task whatever the roots, hidden files are refused by default, a
`serve` reachable by others needs explicit roots, and a loopback `serve` answers only to
loopback Host names (DNS rebinding)."""

from __future__ import annotations

import argparse
import shutil
import uuid

import pytest
import uvicorn
from fastapi.testclient import TestClient
from servicekit import AUTH
from test_staging_security import text_task
from test_task_security import folder_with, sec  # noqa: F401 (fixture)

from service.api.app import create_app
from service.api.serve_policy import ServeRefused, check_serve
from service.cli import main as cli
from service.settings import Settings

DOT_ENV = "MERGEOPT_TOKENS=s3cr3t-env-4411\nMERGEOPT_DATABASE_URL=postgresql://u:pw@db/x\n"


def suite_of(folder) -> dict:
    return {"name": f"s-{uuid.uuid4().hex[:6]}", "include_path": str(folder), "tasks": [{"task": "tiny_add"}]}


def test_the_services_dot_env_and_hidden_files_are_not_task_data(sec):  # noqa: F811
    """A token-holder pointed a text task at the .env in the roots (the default roots are the
    working directory, where `serve` reads .env): 201, then its lines were the documents. Now:
    the .env by name, through a link with an innocent name, and any hidden file: 403."""
    (sec["root"] / ".env").write_text(DOT_ENV)
    hidden = sec["root"] / ".private"
    hidden.mkdir(exist_ok=True)
    (hidden / "notes.txt").write_text("s3cr3t-hidden\n")
    cases = {".env": sec["root"] / ".env", "a link to .env": None, "a hidden folder": hidden / "notes.txt"}
    for what, target in cases.items():
        folder, data = text_task(sec, template="{{text}}")
        if target is None:
            data.unlink()
            data.symlink_to(sec["root"] / ".env")
        else:
            text = (folder / "tiny_add.yaml").read_text().replace(str(data), str(target))
            (folder / "tiny_add.yaml").write_text(text)
        r = sec["c"].post("/v1/suites", json=suite_of(folder), headers=AUTH)
        assert r.status_code == 403, (what, r.text)
        assert "settings or secrets" in r.text or "hidden" in r.text, (what, r.text)
        assert "s3cr3t" not in r.text


def test_a_pool_file_linked_to_the_services_database_is_refused(sec, tmp_path):  # noqa: F811
    """The service's SQLite database (inside the default roots) is not a tokenizer file."""
    settings = sec["settings"].model_copy(update={"database_url": f"sqlite:///{sec['root']}/own-{uuid.uuid4().hex[:6]}.db"})
    pool = sec["a"]["pool"]
    victim = sec["root"] / f"ckpt-{uuid.uuid4().hex[:6]}"
    shutil.copytree(pool["checkpoints"][1]["path"], victim)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        (victim / "vocab.txt").symlink_to(settings.database_url.removeprefix("sqlite:///"))
        body = {"name": "p", "base": pool["base"], "checkpoints": [*pool["checkpoints"][:1], {"name": "v", "path": str(victim)}]}
        r = c.post("/v1/pools", json=body, headers=AUTH)
    assert r.status_code == 403 and "settings or secrets" in r.text, r.text
    sec["settings"].guard_files()  # the module's service again


def serve(monkeypatch, **env) -> Settings:
    """What `mergeopt serve` would run with (uvicorn not started), or ServeRefused."""
    for key in ("MERGEOPT_ALLOWED_ROOTS", "MERGEOPT_ALLOWED_HOSTS", "MERGEOPT_HOST"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    monkeypatch.setattr(cli, "create_app", None, raising=False)
    args = argparse.Namespace(host=None, port=None, db="sqlite:///:memory:", no_worker=True)
    cli.cmd_serve(args)
    return ran["app"].state.settings


def test_serve_on_a_public_address_needs_explicit_roots(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ServeRefused, match="MERGEOPT_ALLOWED_ROOTS"):
        serve(monkeypatch, MERGEOPT_HOST="0.0.0.0")
    assert serve(monkeypatch, MERGEOPT_HOST="0.0.0.0", MERGEOPT_ALLOWED_ROOTS=str(tmp_path)).allowed_roots == [tmp_path.resolve()]
    assert serve(monkeypatch).host == "127.0.0.1"  # the local default stays easy


def test_loopback_serve_answers_only_to_loopback_host_names(monkeypatch, tmp_path):
    """Finding 10: reads open and no MERGEOPT_ALLOWED_HOSTS: a rebinding page (Host: evil.example)
    read the API. A loopback serve now serves only loopback names unless told otherwise."""
    monkeypatch.chdir(tmp_path)
    settings = serve(monkeypatch)
    assert "localhost" in settings.allowed_hosts and "127.0.0.1" in settings.allowed_hosts
    with TestClient(create_app(settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/h.db"}))) as c:
        assert c.get("/v1/studies", headers={"Host": "evil.example:8000"}).status_code == 400
        assert c.get("/v1/studies", headers={"Host": "127.0.0.1:8000"}).status_code == 200
        assert c.get("/v1/studies", headers={"Host": "localhost:8000"}).status_code == 200
    assert serve(monkeypatch, MERGEOPT_ALLOWED_HOSTS="api.example.org").allowed_hosts == ["api.example.org"]
    public = Settings(host="0.0.0.0", allowed_roots=str(tmp_path), allowed_hosts=[])
    assert check_serve(public).allowed_hosts == []  # public: as the operator set it


def test_hidden_files_are_allowed_when_the_operator_says_so(sec):  # noqa: F811
    folder, data = text_task(sec, template="{{text}}")
    hidden = sec["root"] / ".cache-like"
    hidden.mkdir(exist_ok=True)
    shutil.copy(data, hidden / "lines.txt")
    text = (folder / "tiny_add.yaml").read_text().replace(str(data), str(hidden / "lines.txt"))
    (folder / "tiny_add.yaml").write_text(text)
    assert sec["c"].post("/v1/suites", json=suite_of(folder), headers=AUTH).status_code == 403
    sec["settings"].model_copy(update={"allow_hidden": True}).guard_files()
    try:
        assert sec["c"].post("/v1/suites", json=suite_of(folder), headers=AUTH).status_code == 201
    finally:
        sec["settings"].guard_files()
