"""Checks that must happen before a request body is read: the Host, the token, the content type, then the body's
size and pace.

FastAPI reads (and parses) the whole body before any route dependency runs, so a client without a token
could make the server hold any number of megabytes before its 401. This ASGI middleware answers 401 from
the headers alone and 413 as soon as a body passes ``MAX_BODY_BYTES``, buffering at most that much. Both close
the connection, so a body the server will never read is not drained from a kept-alive connection either.

Web pages: a page may POST a "simple" request (``text/plain``, a form) to any address without asking first,
and a page whose host name is rebound to 127.0.0.1 (DNS rebinding) may read the answers. So a request whose
``Host`` is not the address the server is bound to is refused (421), and so is a body of a type a page can
send unasked (415): JSON routes take ``application/json``, uploads ``application/octet-stream``.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nfsd_contract import API_PREFIX, MAX_INIT_MESH_BYTES
from nfsd_server.api.auth import token_problem

# A job request is at most ~40 KB even with every string at its maximum and fully \u-escaped.
MAX_BODY_BYTES = 64 * 1024
# Routes whose bodies are files, with their own caps (checked again by the route, which names the fix).
BODY_CAPS = {f"{API_PREFIX}/meshes": MAX_INIT_MESH_BYTES + 1}
OPEN_PATHS = frozenset({f"{API_PREFIX}/health"})  # the only API route that needs no token
# Routes whose bodies are files, not JSON: the type they must declare.
UPLOAD_TYPES = {f"{API_PREFIX}/meshes": "application/octet-stream"}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A client that sends no byte of its body for this long is dropped (a byte a second would otherwise hold a
# connection for as long as it likes).
BODY_IDLE_TIMEOUT_S = 30.0


def content_type_problem(path: str, method: str, headers: dict[str, str]) -> str | None:
    """Why this request's body type is refused (415), or None. ``headers``: lower-case names."""
    has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
    if method not in BODY_METHODS or not path.startswith(f"{API_PREFIX}/") or not has_body:
        return None
    content_type = headers.get("content-type")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    expected = UPLOAD_TYPES.get(path, "application/json")
    # A missing type is refused too: a page's fetch of an untyped Blob sends none, unasked.
    if media_type != expected:
        shown = repr(media_type) if media_type else "missing"
        return f"Content-Type {shown} is not accepted here; send the body as {expected}"
    return None


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header: 'localhost' for 'localhost:PORT', '::1' for '[::1]:PORT'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class GuardMiddleware:
    def __init__(
        self, app: ASGIApp, token: str | None, max_body_bytes: int = MAX_BODY_BYTES,
        allowed_hosts: frozenset[str] | None = None, body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    ):
        """``allowed_hosts``: the host names a ``Host`` header may carry (None: any, for a non-loopback bind,
        where the token guards)."""
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes
        self.allowed_hosts, self.body_idle_timeout_s = allowed_hosts, body_idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            detail = f"Host {headers.get('host', '')!r} is not this server's address"
            hint = f"connect by one of {sorted(self.allowed_hosts)} (the address the server is bound to)"
            await self._refuse(scope, receive, send, 421, detail, hint)
            return
        if scope["path"].startswith(f"{API_PREFIX}/") and scope["path"] not in OPEN_PATHS:
            problem = token_problem(headers.get("authorization"), self.token)
            if problem is not None:
                # Closed with the answer: the body will never be read, so it must not be drained either.
                await self._refuse(scope, receive, send, 401, str(problem.detail), problem.hint, problem.headers)
                return
        cap = BODY_CAPS.get(scope["path"], self.max_body_bytes)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await self._too_large(scope, receive, send, cap)
            return
        refused_type = content_type_problem(scope["path"], scope["method"], headers)
        if refused_type is not None:
            hint = "this API is for the add-on and scripts, not web pages; set the Content-Type header"
            await self._refuse(scope, receive, send, 415, refused_type, hint)
            return
        # No (or an honest-looking) length: read at most the cap, then hand the buffered body on.
        messages: list[Message] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_idle_timeout_s)
            except asyncio.TimeoutError:
                detail = f"no byte of the request body arrived for {self.body_idle_timeout_s:.0f} s"
                await self._refuse(scope, receive, send, 408, detail, "send the body without pausing")
                return
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > cap:
                await self._too_large(scope, receive, send, cap)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        hint = (f"a job request is a small JSON object; keep bodies under {cap // 1024} KiB" if cap == self.max_body_bytes
                else f"this upload is capped at {cap // 2**20} MiB; decimate the mesh or apply fewer modifiers")
        await self._refuse(scope, receive, send, 413, f"request body is larger than {cap} bytes", hint)

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, status: int, detail: str, hint: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``status`` and close the connection (whatever of the body is unread stays unread)."""
        body = {"detail": detail, "hint": hint}
        await JSONResponse(body, status, headers={**(headers or {}), "Connection": "close"})(scope, receive, send)
