"""Work units shared by the processes of one study, claimed through Optuna's study user
attributes (no table of our own, so a study run by `mergeopt run` resumes the same way).

A unit is done when its result key exists. A claim is ``{"by": owner, "at": time}``, taken under
the study lock and refreshed by a heartbeat thread while its owner works; a claim whose
heartbeat stopped for ``grace_s`` is taken over (the owner died), a live one never is, however
long the work takes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from optimizer.attrs import CLAIM_AT, CLAIM_BY


class Claims:
    def __init__(self, study, owner: str, *, heartbeat_s: float, grace_s: float,
                 claim_prefix: str, done_prefix: str) -> None:
        self.study, self.owner = study, owner
        self.heartbeat_s, self.grace_s = heartbeat_s, grace_s
        self.claim_prefix, self.done_prefix = claim_prefix, done_prefix

    def claim_key(self, unit: Any) -> str:
        return f"{self.claim_prefix}{unit}"

    def done_key(self, unit: Any) -> str:
        return f"{self.done_prefix}{unit}"

    def fresh(self, claim: Mapping | None) -> bool:
        return claim is not None and time.time() - claim.get(CLAIM_AT, 0) < self.grace_s

    def open_work(self, attrs: Mapping, units: Iterable) -> tuple[list, list]:
        """(units not done and free to take, units being worked on by a live claimant)."""
        todo, busy = [], []
        for u in units:
            if self.done_key(u) in attrs:
                continue
            claim = attrs.get(self.claim_key(u))
            (busy if self.fresh(claim) and claim.get(CLAIM_BY) != self.owner else todo).append(u)
        return todo, busy

    def take(self, unit: Any) -> Callable[[], None]:
        """Claim ``unit`` now and refresh the claim from a daemon thread; returns the stop."""
        stop = threading.Event()
        key = self.claim_key(unit)

        def mark() -> None:
            self.study.set_user_attr(key, {CLAIM_BY: self.owner, CLAIM_AT: time.time()})

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                try:
                    mark()
                except Exception:  # a database blip must not kill the work; the next beat retries
                    pass

        mark()
        threading.Thread(target=beat, daemon=True, name=f"claim-{key}").start()
        return stop.set
