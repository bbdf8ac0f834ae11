"""HTTP client for the nfsd_server API (under the contract's ``API_PREFIX``): plain urllib + json, no bpy (testable
without Blender)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from .contract import API_PREFIX


class BackendError(Exception):
    """A failure the artist can act on: ``str(err)`` is one clear line, ``hint`` says what to try."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.hint = hint
        self.status = status
        # Worth retrying: the server was unreachable, timed out, or answered 5xx (restarting, overloaded).
        self.transient = transient or (status is not None and status >= 500)

    def __str__(self) -> str:
        msg = self.args[0]
        return f"{msg} ({self.hint})" if self.hint else msg


def _detail_message(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI 422: [{loc, msg, ...}]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                msg = item.get("msg", "invalid value")
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts) or "invalid request"
    return str(detail)


def refused_token(token: str) -> BackendError:
    """The one wording for a server that will not take our token (a 401, or health saying so)."""
    what = "refused the token" if token else "needs a token"
    return BackendError(f"The server {what}: copy the server's token (its --token or NFSD_TOKEN) into the add-on "
                        "preferences", status=401)


# What to do about a server that does not answer, by where it runs.
UNREACHABLE_HINTS = {
    "LOCAL": "the local backend stopped answering; press Stop Backend, then Start Backend, in the add-on preferences",
    "REMOTE": "check the URL in the add-on preferences, and that the server is running there",
}


class Client:
    def __init__(self, base_url: str, token: str = "", timeout: float = 10.0, mode: str = "REMOTE"):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.unreachable_hint = UNREACHABLE_HINTS[mode]

    def _request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[bytes, str]:
        data = json.dumps(body).encode() if body is not None else raw
        req = urllib.request.Request(self.base_url + API_PREFIX + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raw = err.read()
            message, hint = f"HTTP {err.code}", None
            try:
                payload = json.loads(raw)
                if isinstance(payload, dict):
                    message = _detail_message(payload.get("detail", message))
                    hint = payload.get("hint")
                    if hint and message.lower() in hint.lower():  # a 422's hint restates its detail: say it once
                        hint = None
            except (ValueError, UnicodeDecodeError):
                if raw:
                    message = raw.decode(errors="replace")[:200]
            if err.code == 401:
                raise refused_token(self.token) from None
            raise BackendError(message, hint, err.code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise BackendError(
                f"Cannot reach the server at {self.base_url}: {reason}",
                self.unreachable_hint,
                transient=True,
            ) from None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        raw, _ = self._request(method, path, body)
        try:
            return json.loads(raw)
        except ValueError:
            raise BackendError(f"The server sent a reply that is not JSON for {path}") from None

    def health(self) -> dict:
        return self._json("GET", "/health")

    def upload_mesh(self, data: bytes, file_type: str) -> str:
        """Send a mesh file (GLB, OBJ or PLY bytes); returns the id a job's ``init_mesh`` takes."""
        raw, _ = self._request("POST", f"/meshes?format={file_type}", raw=data)
        try:
            return json.loads(raw)["id"]
        except (ValueError, KeyError, TypeError):
            raise BackendError(f"The server sent a reply without a mesh id for {API_PREFIX}/meshes") from None

    def submit(self, request: dict) -> str:
        return self._json("POST", "/jobs", request)["id"]

    def jobs(self) -> list[dict]:
        return self._json("GET", "/jobs")["jobs"]

    def status(self, job_id: str) -> dict:
        return self._json("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._json("DELETE", f"/jobs/{job_id}")

    def preview(self, job_id: str) -> bytes:
        return self._request("GET", f"/jobs/{job_id}/preview.png")[0]

    def result_glb(self, job_id: str) -> bytes:
        return self._request("GET", f"/jobs/{job_id}/result.glb")[0]

    def models(self) -> list[dict]:
        """``GET /v1/models``: what the server can load and whether each is already downloaded."""
        return self._json("GET", "/models")["models"]

    def downloads(self) -> list[dict]:
        """``GET /v1/models/downloads``: the server's model downloads (state, bytes done of total)."""
        reply = self._json("GET", "/models/downloads")
        if not isinstance(reply, dict) or not isinstance(reply.get("downloads"), list):
            raise BackendError(f"The server sent no download list for {API_PREFIX}/models/downloads",
                               "update the backend (Install Backend in the add-on preferences)")
        return reply["downloads"]

    def start_download(self, model: str) -> dict:
        return self._json("POST", "/models/downloads", {"model": model})

    def download(self, download_id: str) -> dict:
        return self._json("GET", f"/models/downloads/{download_id}")

    def cancel_download(self, download_id: str) -> dict:
        return self._json("DELETE", f"/models/downloads/{download_id}")

    def result_json(self, job_id: str) -> dict:
        return self._json("GET", f"/jobs/{job_id}/result.json")
