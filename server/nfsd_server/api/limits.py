"""Checks that must happen before a request body is read: the token, then the body's size.

FastAPI reads (and parses) the whole body before any route dependency runs, so a client without a token
could make the server hold any number of megabytes before its 401. This ASGI middleware answers 401 from
the headers alone and 413 as soon as a body passes ``MAX_BODY_BYTES``, buffering at most that much.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nfsd_contract import MAX_INIT_MESH_BYTES
from nfsd_server.api.auth import token_problem

# A job request is at most ~40 KB even with every string at its maximum and fully \u-escaped.
MAX_BODY_BYTES = 64 * 1024
# Routes whose bodies are files, with their own caps (checked again by the route, which names the fix).
BODY_CAPS = {"/v1/meshes": MAX_INIT_MESH_BYTES + 1}
OPEN_PATHS = frozenset({"/v1/health"})  # the only /v1 route that needs no token


class GuardMiddleware:
    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int = MAX_BODY_BYTES):
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if scope["path"].startswith("/v1/") and scope["path"] not in OPEN_PATHS:
            problem = token_problem(headers.get("authorization"), self.token)
            if problem is not None:
                body = {"detail": problem.detail, "hint": problem.hint}
                await JSONResponse(body, 401, headers=problem.headers)(scope, receive, send)
                return
        cap = BODY_CAPS.get(scope["path"], self.max_body_bytes)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await self._too_large(scope, receive, send, cap)
            return
        # No (or an honest-looking) length: read at most the cap, then hand the buffered body on.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
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
        body = {"detail": f"request body is larger than {cap} bytes", "hint": hint}
        await JSONResponse(body, 413, headers={"Connection": "close"})(scope, receive, send)
