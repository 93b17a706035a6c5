"""Set-up as claimed units (optimizer/setup.py), in-process with fake evaluators, on SQLite and
PostgreSQL: a set-up killed at each stage resumes to exactly the uninterrupted result with
nothing finished redone; a unit that runs longer than the grace period is never taken from its
live owner; two processes share the set-up."""

from __future__ import annotations

import threading
import time

import optuna
import pytest

from contract.merge import one_hot
from optimizer import attrs as K
from optimizer import validation as V
from optimizer.loop import StudyRunner
from optimizer.records import A_FRONT, trial_rows
from optimizer.spec import parse_spec
from optimizer.storage import open_storage

from fakes import NoisyPool

NAMES = ["a", "b", "c"]


def truth(p):
    return {"x": 0.45 + 0.3 * p[0] - 0.1 * p[2], "y": 0.5 + 0.25 * p[1], "z": 0.55 + 0.1 * p[2]}


class Killed(BaseException):
    """The process dies here (as SIGKILL would: nothing after it runs, nothing is cleaned up)."""


class Pool(NoisyPool):
    """Logs each finished evaluation; dies at call number ``die_at`` (evaluations and
    validations counted together) or sleeps ``slow_s`` on ``slow_label``'s candidate."""

    def __init__(self, log: list, *, die_at: int | None = None, slow: dict | None = None, who: str = "") -> None:
        super().__init__(NAMES, truth, seed=3)
        self.log, self.die_at, self.slow, self.who, self.calls = log, die_at, slow or {}, who, 0

    def _call(self, kind, c):
        if self.calls == self.die_at:
            raise Killed
        self.calls += 1
        key = (kind, str(sorted(c.to_json().items())))
        if key == self.slow.get("key"):
            time.sleep(self.slow["seconds"])
        return key

    def evaluate(self, c, fidelity=1.0):
        key = self._call("evaluate", c)
        out = super().evaluate(c, fidelity)
        self.log.append((self.who, key))
        return out

    def validate(self, c):
        key = self._call("validate", c)
        out = super().validate(c)
        self.log.append((self.who, key))
        return out


def make_spec(url, name):
    return parse_spec({
        "name": name,
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
        "suite": {"tasks": [{"task": t, "normalize": "expert"} for t in ("x", "y")] + [{"task": "z", "split": "held_out"}]},
        "search": {"n_trials": 12, "sampler": "random"},
        "storage": url,
    })


def outcome(study) -> dict:
    attrs = study.user_attrs
    return {"trials": [(r.number, r.label, r.raw) for r in trial_rows(study)],
            "validation": V.stored(attrs), "front": attrs[A_FRONT], "vfront": attrs[V.A_VFRONT],
            "vrefs": attrs[V.A_VREFS], "noise": attrs["noise"]}


def runner(url, name, pool, **kw):
    return StudyRunner(make_spec(url, name), pool, progress=False,
                       storage=open_storage(url, heartbeat_s=1, grace_s=kw.pop("grace_s", 1)), **kw)


def test_setup_killed_at_each_stage_resumes_to_the_uninterrupted_result(storage_url, study_name):
    ref_log: list = []
    ref = runner(storage_url, f"{study_name}-ref", Pool(ref_log))
    ref.prepare()
    want = outcome(ref.study)
    # One process's order: references a, b, c, base (0-3), soups (4, 5), merge baselines
    # (6-9), validations (10-19). Each process dies at its Nth call; the next one resumes.
    log: list = []
    for i, die_at in enumerate([1, 4, 3, 1, 2, 6, None]):  # a reference, a soup, merge baselines, validations
        r = runner(storage_url, study_name, Pool(log, die_at=die_at, who=f"p{i}"))
        if die_at is None:
            r.prepare()
        else:
            with pytest.raises(Killed):
                r.prepare()
    assert outcome(r.study) == want
    assert sorted(key for _, key in log) == sorted(key for _, key in ref_log)  # nothing finished was redone
    assert len({who for who, _ in log}) == 7  # every process did some of it
    for name in (study_name, f"{study_name}-ref"):
        optuna.delete_study(study_name=name, storage=storage_url)


def test_a_live_owner_keeps_its_unit_past_the_grace_period_and_others_share_the_rest(storage_url, study_name):
    lock = threading.Lock()
    log: list = []
    slow_key = ("evaluate", str(sorted(one_hot(NAMES, "a").to_json().items())))
    slow = Pool(log, slow={"key": slow_key, "seconds": 5.0}, who="A")  # 2.5 grace periods
    a = runner(storage_url, study_name, slow, grace_s=2, claim=lambda: lock)
    b = runner(storage_url, study_name, Pool(log, who="B"), grace_s=2, claim=lambda: lock)
    errors = []

    def go(r):
        try:
            r.prepare()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    ta = threading.Thread(target=go, args=(a,))
    ta.start()
    deadline = time.monotonic() + 30
    while K.SETUP_CLAIM + "checkpoint:a" not in a.study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.05)
    tb = threading.Thread(target=go, args=(b,))
    tb.start()
    ta.join(60)
    tb.join(60)
    assert not errors and not ta.is_alive() and not tb.is_alive()
    keys = [key for _, key in log]
    assert len(keys) == len(set(keys)) == 4 + 4 + 2 + 10  # every unit once: 4 references, 4 merges, 2 soups, 10 validations
    assert [who for who, key in log if key == slow_key] == ["A"]  # never taken from its live owner
    assert {who for who, _ in log} == {"A", "B"}  # B worked meanwhile
    assert K.A_SETUP_DONE in b.study.user_attrs and b.prepared and a.prepared
    optuna.delete_study(study_name=study_name, storage=storage_url)
