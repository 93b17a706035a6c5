"""Shared pieces of the service tests: a tiny registered pool and suite, a settings object, SSE parsing."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.settings import Settings

from tinypool import make_pool, make_tasks

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_assets(root: Path, n_docs: int = 12) -> dict:
    pool = make_pool(root / "pool", n=3, noise=0.3)
    include, tasks = make_tasks(root, n_docs=n_docs)
    return {
        "pool": {"base": str(pool["base"]), "checkpoints": [{"name": n, "path": str(p)} for n, p in pool["checkpoints"]]},
        "suite": {"include_path": str(include), "tasks": [{"task": tasks[0]}, {"task": tasks[1], "split": "held_out"}]},
    }


def settings_for(root: Path, url: str) -> Settings:
    return Settings(database_url=url, allowed_roots=[str(root)], tokens=[TOKEN], worker_poll_s=0.2, sse_poll_s=0.1)


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append({"id": int(fields["id"]), "type": fields["event"], "data": json.loads(fields["data"])})
    return events


def wait_for(predicate, timeout: float = 120, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def check_front_consistent(front: dict, trials: list[dict]) -> None:
    """The front is exactly the non-dominated set of the completed trials: over their validation
    scores (the trials that have them) for the validation front, else over search scores."""
    tasks = front["tasks"]
    if front.get("split") == "validation":
        done = {t["number"]: [t["validation"]["normalized"][k]["value"] for k in tasks] for t in trials
                if t["state"] == "COMPLETE" and t.get("validation") and "normalized" in t["validation"]}
        assert all(e["normalized"] == dict(zip(tasks, done[e["trial"]], strict=True)) for e in front["front"])
    else:
        done = {t["number"]: [t["normalized"][k] for k in tasks] for t in trials if t["state"] == "COMPLETE"}
    on = {e["trial"] for e in front["front"]}

    def dominated(n):
        p = done[n]
        return any(all(a >= b for a, b in zip(q, p, strict=True)) and any(a > b for a, b in zip(q, p, strict=True))
                   for m, q in done.items() if m != n)

    assert on == {n for n in done if not dominated(n)}


def stored(c: TestClient) -> dict:
    """Everything the API lists; compared before and after each batch of bad requests."""
    out = {kind: c.get(f"/v1/{kind}").json() for kind in ("pools", "suites")}
    out["studies"] = [{k: s[k] for k in ("id", "name", "state", "progress", "search")} for s in c.get("/v1/studies").json()]
    out["trials"] = {s["name"]: c.get(f"/v1/studies/{s['id']}/trials").json() for s in out["studies"]}
    return out
