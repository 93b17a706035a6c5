"""docker/ (issue 20, finding 9): compose.yml published PostgreSQL on 0.0.0.0:5432 with the
default password `mergeopt`, as its superuser (COPY ... TO PROGRAM runs commands). Now it is not
published, every password must be set, the service's role is no superuser, and the way in for
remote workers is an SSH tunnel to a port published on loopback only."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).parent.parent / "docker"


def load(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def test_postgresql_is_not_published_and_needs_set_passwords():
    compose = load("compose.yml")
    db = compose["services"]["db"]
    assert "ports" not in db and "network_mode" not in db
    text = (DOCKER / "compose.yml").read_text()
    assert not re.search(r"\$\{[A-Z_]*PASSWORD:-", text), "a password with a default"
    assert "${POSTGRES_PASSWORD:?" in text and "${MERGEOPT_DB_PASSWORD:?" in text
    url = compose["x-env"]["MERGEOPT_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://mergeopt:${MERGEOPT_DB_PASSWORD:?")
    assert db["environment"]["POSTGRES_USER"] != "mergeopt"  # the service's role is not the superuser


def test_the_services_role_is_created_without_superuser_rights():
    script = (DOCKER / "initdb" / "10-mergeopt-role.sh").read_text()
    assert "CREATE ROLE mergeopt LOGIN NOSUPERUSER" in script and "PASSWORD :'pw'" in script
    assert "./initdb:/docker-entrypoint-initdb.d:ro" in load("compose.yml")["services"]["db"]["volumes"]


def test_remote_workers_get_loopback_only_and_a_documented_tunnel():
    ports = load("compose.remote-workers.yml")["services"]["db"]["ports"]
    assert ports == ["127.0.0.1:5432:5432"]
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "ssh -N -L 15432:127.0.0.1:5432" in readme and "compose.remote-workers.yml" in readme
