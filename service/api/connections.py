"""Connections to `mergeopt serve`, bounded (1,100 sockets that never finish their headers, or a
thousand event streams at a 1024-descriptor limit, starved every other client):

- a request's headers must arrive within MERGEOPT_HEADER_TIMEOUT_S of the connection opening (or
  of the previous response ending) or the connection is closed;
- one client address holds at most MERGEOPT_MAX_CONNECTIONS_PER_CLIENT connections; beyond, a
  new one is closed at once (behind a proxy every client is the proxy: raise it, or cap there);
- open event streams are capped by the process's descriptor limit too (half of what is left
  after a reserve), whatever MERGEOPT_MAX_STREAMS says, and uvicorn's concurrency below it.

uvicorn has no header timeout of its own: this is its h11 protocol with both checks added."""

from __future__ import annotations

import resource
from collections import Counter

from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

FD_RESERVE = 128  # database connections, files, the worker's: never all to sockets


def fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def stream_cap(settings: Settings) -> int:
    """MERGEOPT_MAX_STREAMS, or less where the descriptor limit could not hold that many."""
    return max(1, min(settings.max_streams, (fd_limit() - FD_RESERVE) // 2))


def connection_cap() -> int:
    """uvicorn's limit_concurrency: above it, 503 rather than running out of descriptors."""
    return max(16, fd_limit() - FD_RESERVE)


def guarded_protocol(settings: Settings) -> type[H11Protocol]:
    per_client: Counter[str] = Counter()

    class GuardedH11(H11Protocol):
        header_timeout_s = settings.header_timeout_s
        max_per_client = settings.max_connections_per_client

        def connection_made(self, transport) -> None:  # type: ignore[override]
            self._counted: str | None = None
            self._header_timer = None
            super().connection_made(transport)
            host = self.client[0] if self.client else "unknown"
            if per_client[host] >= self.max_per_client:
                transport.close()
                return
            per_client[host] += 1
            self._counted = host
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted is not None:
                per_client[self._counted] -= 1
                if per_client[self._counted] <= 0:
                    del per_client[self._counted]
                self._counted = None
            self._disarm()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if not self._waiting_for_headers():
                self._disarm()
            elif self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11
