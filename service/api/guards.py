"""Checks made on a request before any route sees it, in this order: the Host header against
MERGEOPT_ALLOWED_HOSTS (DNS rebinding), no NUL byte in the URL, the bearer token of a request that needs one (so that
an unauthenticated client never gets its body read or parsed: 401, not 422), then the body,
read in full within MERGEOPT_BODY_TIMEOUT_S (a client trickling bytes holds no handler: 408).

The token dependencies in deps.py stay on every route (and document it in the OpenAPI schema);
this only answers the same 401/403 earlier."""

from __future__ import annotations

import asyncio

from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import token_error
from service.settings import Settings

SAFE = {"GET", "HEAD", "OPTIONS"}  # no body; reads need a token only with protect_reads


def host_allowed(host_header: str, allowed: list[str]) -> bool:
    """``host_header`` without its port against names, '*.suffix' patterns, or '*'."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    for name in allowed:
        if name == "*" or host == name or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings, headers, method = self.settings, Headers(scope=scope), scope["method"]
        if settings.allowed_hosts and not host_allowed(headers.get("host", ""), settings.allowed_hosts):
            shown = headers.get("host", "")[:100]
            await JSONResponse({"detail": f"host '{shown}' is not served here (MERGEOPT_ALLOWED_HOSTS)"},
                               status_code=400)(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:  # PostgreSQL refuses NUL in text: a 500
            await JSONResponse({"detail": "the URL must not contain a NUL byte"}, status_code=400)(scope, receive, send)
            return
        if scope["path"].startswith("/v1/") and (method not in SAFE or settings.protect_reads):
            error = token_error(*get_authorization_scheme_param(headers.get("authorization")), settings)
            if error is not None:
                await JSONResponse({"detail": error.detail}, status_code=error.status_code,
                                   headers=error.headers)(scope, receive, send)
                return
        if method in SAFE:
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                body = await _read_body(receive)
        except TimeoutError:
            await JSONResponse({"detail": f"request body not received within {settings.body_timeout_s:g} s "
                                          "(MERGEOPT_BODY_TIMEOUT_S)"},
                               status_code=408, headers={"Connection": "close"})(scope, receive, send)
            return
        if body is None:  # the client went away mid-body
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then http.disconnect, as the server reports it

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (its size is capped by the body-limit middleware around this one)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
