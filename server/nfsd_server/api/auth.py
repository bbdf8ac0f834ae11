"""Bearer-token check for every route but health (documented in the OpenAPI spec as ``bearer``)."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nfsd_server.api.errors import ApiError

# auto_error=False: we answer 401 with our own JSON body (and a hint) instead of FastAPI's bare one.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="`Authorization: Bearer <token>`; the token is the server's --token or NFSD_TOKEN.",
)


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """401 unless the bearer token matches. A loopback server started without a token accepts anyone."""
    expected: str | None = request.app.state.token
    if expected is None:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(
            401, "missing 'Authorization: Bearer <token>' header",
            hint="send the token the server was started with (--token or NFSD_TOKEN)", headers=challenge,
        )
    # Constant-time: the comparison must not tell an attacker how many leading characters were right.
    if not hmac.compare_digest(credentials.credentials.encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(
            401, "wrong token", hint="check the token in the add-on's preferences matches the server's",
            headers=challenge,
        )
