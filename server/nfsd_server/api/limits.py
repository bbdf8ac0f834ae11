"""Checks that must happen before a request body is read: the token, then the body's size.

FastAPI reads (and parses) the whole body before any route dependency runs, so a client without a token
could make the server hold any number of megabytes before its 401. This ASGI middleware answers 401 from
the headers alone and 413 as soon as a body passes ``MAX_BODY_BYTES``, buffering at most that much.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nfsd_server.api.auth import token_problem

# A job request is at most ~40 KB even with every string at its maximum and fully \u-escaped.
# (There is no mesh upload route yet; when there is, it gets its own, larger cap here.)
MAX_BODY_BYTES = 64 * 1024
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
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
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
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {
            "detail": f"request body is larger than {self.max_body_bytes} bytes",
            "hint": f"a job request is a small JSON object; keep bodies under {self.max_body_bytes // 1024} KiB",
        }
        await JSONResponse(body, 413, headers={"Connection": "close"})(scope, receive, send)
