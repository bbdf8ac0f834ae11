"""Request bodies are bounded, and the token is checked before any of a body is read (raw ASGI calls)."""

from __future__ import annotations

import asyncio
import json

from api_helpers import RED_BALL, TOKEN


def _asgi_call(app, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, int]:
    """POST /v1/jobs straight through ASGI: (status, JSON body, how many body chunks the app asked for)."""

    asked = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal asked
        asked += 1
        if asked > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[asked - 1], "more_body": asked < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/jobs", "raw_path": b"/v1/jobs", "root_path": "", "query_string": b"",
        "headers": [(key.lower().encode(), value.encode()) for key, value in headers.items()],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }
    asyncio.run(app(scope, receive, send))
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return status, json.loads(body), asked


def test_api_the_token_is_checked_before_any_of_the_body_is_read(client):
    hundred_mb = {"content-type": "application/json", "content-length": str(100 * 2**20)}
    status, body, asked = _asgi_call(client.app, hundred_mb, [b"x" * 2**20] * 100)
    assert (status, asked) == (401, 0) and body["detail"].startswith("missing")
    status, _, asked = _asgi_call(client.app, hundred_mb | {"authorization": "Bearer wrong"}, [b"x"])
    assert (status, asked) == (401, 0)


def test_api_bodies_over_the_cap_are_413(client):
    from nfsd_server.api.limits import MAX_BODY_BYTES

    declared = {"authorization": f"Bearer {TOKEN}", "content-length": str(10 * 2**20)}
    status, body, asked = _asgi_call(client.app, declared, [b"x" * 2**20] * 10)
    assert (status, asked) == (413, 0) and str(MAX_BODY_BYTES) in body["detail"] and body["hint"]
    # No length given (chunked): reading stops at the first chunk past the cap.
    status, _, asked = _asgi_call(client.app, {"authorization": f"Bearer {TOKEN}"}, [b" " * 16384] * 1000)
    assert status == 413 and asked == MAX_BODY_BYTES // 16384 + 1
    response = client.post("/v1/jobs", content=b" " * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    assert response.status_code == 413
    # Just under the cap is read and validated as usual.
    padded = json.dumps(RED_BALL).encode() + b" " * (MAX_BODY_BYTES - len(json.dumps(RED_BALL)))
    assert client.post("/v1/jobs", content=padded, headers={"content-type": "application/json"}).status_code == 202
    assert client.get("/v1/jobs").json()["jobs"][0]["state"] in ("queued", "running", "exporting", "done")

