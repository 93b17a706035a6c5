"""Export downloads hold disk until they are sent, so both are bounded. The merge's folder is
deleted as soon as its archive is written; the archive's bytes count against
MERGEOPT_EXPORT_DISK_MB (all downloads of this process together; beyond, 429, or 507 for one
archive larger than the whole budget) until its response ends. The response removes the archive's
name as soon as it has it open, and closes it (freeing the disk) when the download ends, the
client disconnects, or one chunk is not taken by the client within MERGEOPT_EXPORT_SEND_TIMEOUT_S
(a client that never reads held 466 MB for minutes; the old cleanup ran only after the send)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import anyio
from fastapi import HTTPException, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)
CHUNK = 1 << 20
_CREATE = threading.Lock()


class DiskLedger:
    def __init__(self, cap_bytes: int) -> None:
        self.cap, self.held = cap_bytes, 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> None:
        with self._lock:
            if n > self.cap:
                raise HTTPException(507, f"the archive is {n >> 20} MiB, more than the downloads' disk budget of "
                                         f"{self.cap >> 20} MiB (MERGEOPT_EXPORT_DISK_MB); export to a path instead")
            if self.held + n > self.cap:
                raise HTTPException(429, f"downloads in progress hold {self.held >> 20} MiB of disk; this one needs "
                                         f"{n >> 20} MiB more than the {self.cap >> 20} MiB budget "
                                         "(MERGEOPT_EXPORT_DISK_MB); retry later", headers={"Retry-After": "30"})
            self.held += n

    def release(self, n: int) -> None:
        with self._lock:
            self.held -= n


def disk_ledger(request: Request) -> DiskLedger:
    state = request.app.state
    with _CREATE:
        if getattr(state, "disk_ledger", None) is None:
            state.disk_ledger = DiskLedger(state.settings.export_disk_mb << 20)
    return state.disk_ledger


class ArchiveResponse(Response):
    """The archive at ``path`` (inside ``folder``, removed with it), sent in chunks as above."""

    def __init__(self, path: Path, folder: Path, ledger: DiskLedger, send_timeout_s: float) -> None:
        super().__init__(media_type="application/gzip")
        self.path, self.folder, self.ledger, self.timeout = path, folder, ledger, send_timeout_s
        self.size = path.stat().st_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below, whatever happens
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)  # the name goes now; the bytes when fh closes
        try:
            async with anyio.create_task_group() as tg:
                async def stream() -> None:
                    await self._stream(fh, send)
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    log.info("export download %s: the client went away", self.path.name)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(watch)
        finally:
            fh.close()
            self.ledger.release(self.size)

    async def _stream(self, fh, send: Send) -> None:
        headers = [(b"content-type", b"application/gzip"), (b"content-length", str(self.size).encode()),
                   (b"content-disposition", f'attachment; filename="{self.path.name}"'.encode())]
        try:
            with anyio.fail_after(self.timeout):
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            while chunk := await anyio.to_thread.run_sync(fh.read, CHUNK):
                with anyio.fail_after(self.timeout):  # a client that stops reading blocks this send
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            with anyio.fail_after(self.timeout):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            log.warning("export download %s: the client took no data for %.0f s; dropped", self.path.name,
                        self.timeout)


def prepared(archive: Path, unpacked: Path, tmp: Path, request: Request) -> ArchiveResponse:
    """The response for a written archive: its merge folder gone, its size reserved."""
    shutil.rmtree(unpacked, ignore_errors=True)
    ledger = disk_ledger(request)
    try:
        ledger.reserve(os.stat(archive).st_size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ArchiveResponse(archive, tmp, ledger, request.app.state.settings.export_send_timeout_s)
