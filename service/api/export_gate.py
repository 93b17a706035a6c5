"""Exports are the API's heaviest request: the whole pool is loaded, merged, written and (for a
download) gzipped, on the API's CPU. A cap on how many run at once (MERGEOPT_EXPORT_CONCURRENCY)
and on how many downloads one client address starts per minute
(MERGEOPT_EXPORT_PER_CLIENT_PER_MIN; a POST export holds a write token and is only capped); beyond either the request is refused at once with 429, a reason and Retry-After, before any
file is opened."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException, Request

from service.settings import Settings

WINDOW_S = 60.0
_CREATE = threading.Lock()


class ExportGate:
    def __init__(self, concurrency: int, per_client_per_min: int) -> None:
        self.concurrency = concurrency
        self.per_client_per_min = per_client_per_min
        self.running = 0
        self._lock = threading.Lock()
        self._starts: dict[str, deque[float]] = {}

    def _admit(self, client: str | None, now: float) -> None:
        if self.running >= self.concurrency:
            raise HTTPException(429, f"{self.running} export(s) already running, the cap is {self.concurrency} "
                                     "(MERGEOPT_EXPORT_CONCURRENCY); retry later", headers={"Retry-After": "30"})
        if not self.per_client_per_min or client is None:
            return
        if len(self._starts) > 10_000:  # forget clients idle for a window: the table stays small
            self._starts = {k: q for k, q in self._starts.items() if q and q[-1] > now - WINDOW_S}
        starts = self._starts.setdefault(client, deque())
        while starts and starts[0] <= now - WINDOW_S:
            starts.popleft()
        if len(starts) >= self.per_client_per_min:
            wait = max(1, int(starts[0] + WINDOW_S - now + 1))
            raise HTTPException(429, f"{len(starts)} exports from {client} in the last minute, the limit is "
                                     f"{self.per_client_per_min} (MERGEOPT_EXPORT_PER_CLIENT_PER_MIN); "
                                     f"retry in {wait} s", headers={"Retry-After": str(wait)})
        starts.append(now)

    @contextmanager
    def slot(self, client: str | None) -> Iterator[None]:
        """One of the running exports; ``client`` (an address) also counts against its rate."""
        with self._lock:
            self._admit(client, time.monotonic())
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1


def export_gate(request: Request) -> ExportGate:
    """The app's gate, made on first use from its settings."""
    state = request.app.state
    gate = getattr(state, "export_gate", None)
    if gate is None:
        with _CREATE:
            gate = getattr(state, "export_gate", None)
            if gate is None:
                settings: Settings = state.settings
                gate = state.export_gate = ExportGate(settings.export_concurrency, settings.export_per_client_per_min)
    return gate


def client_of(request: Request) -> str:
    # The address, not a token: with open reads anyone may send a made-up token per request.
    return request.client.host if request.client else "unknown"
