"""Bearer-token check for every route but health (documented in the OpenAPI spec as ``bearer``).

``token_problem`` is the one check. ``GuardMiddleware`` (limits.py) runs it before a request body is read;
``require_token`` runs it again as a route dependency, which is also what puts ``bearer`` into the spec.
"""

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
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def token_problem(authorization: str | None, expected: str | None) -> ApiError | None:
    """The 401 to answer for this ``Authorization`` header, or None if it may pass.

    A loopback server started without a token (``expected`` None) accepts anyone.
    """
    if expected is None:
        return None
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return ApiError(
            401, "missing 'Authorization: Bearer <token>' header",
            hint="send the token the server was started with (--token or NFSD_TOKEN)", headers=CHALLENGE,
        )
    # Constant-time: the comparison must not tell an attacker how many leading characters were right.
    if not hmac.compare_digest(credentials.encode("utf-8"), expected.encode("utf-8")):
        return ApiError(
            401, "wrong token", hint="check the token in the add-on's preferences matches the server's",
            headers=CHALLENGE,
        )
    return None


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """401 unless the bearer token matches."""
    problem = token_problem(request.headers.get("authorization"), request.app.state.token)
    if problem is not None:
        raise problem
