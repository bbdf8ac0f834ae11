"""A Hugging Face hub on loopback (``HF_ENDPOINT``) serving model folders, so downloads run without the internet.

It answers what ``huggingface_hub.snapshot_download`` asks: the repo's info, its recursive file tree, a HEAD and a
(ranged) GET per file. ``throttle_s`` slows each chunk so a test can cancel or stop a download half-way; every
GET's path and first byte are logged (a resumed download asks from where it stopped).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 16 * 1024


class FakeHub:
    def __init__(self, repos: dict[str, Path], throttle_s: float = 0.0):
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.throttle_s = throttle_s
        self.gets: list[tuple[str, int]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._file(self, head=True)

            def do_GET(self):
                path = urlparse(self.path).path
                if path.startswith("/api/models/"):
                    return hub._api(self, unquote(path[len("/api/models/"):]))
                hub._file(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def total_bytes(self, repo: str, names=None) -> int:
        return sum(p.stat().st_size for name, p in self.files(repo).items() if names is None or name in names)

    # -- answers --------------------------------------------------------------------------------------------
    def _repo_of(self, rest: str) -> tuple[str, str] | None:
        for repo in self.repos:
            if rest.startswith(repo + "/"):
                return repo, rest[len(repo) + 1:]
        return None

    def _api(self, handler, rest: str) -> None:
        found = self._repo_of(rest)
        if found is None:
            return _json(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        repo, tail = found
        files = self.files(repo)
        if tail.startswith("revision/"):
            return _json(handler, 200, {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                        "siblings": [{"rfilename": name} for name in files]})
        if tail.startswith("tree/"):
            entries, dirs = [], set()
            for name, path in files.items():
                parts = name.split("/")
                dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
                entries.append({"type": "file", "oid": _etag(path), "size": path.stat().st_size, "path": name})
            entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
            return _json(handler, 200, entries)
        return _json(handler, 404, {"error": f"no such route {tail}"})

    def _file(self, handler, head: bool) -> None:
        path = unquote(urlparse(handler.path).path).lstrip("/")
        found = self._repo_of(path)
        name = found[1].split("/", 2)[2] if found and found[1].startswith("resolve/") else None
        file = self.files(found[0]).get(name) if name else None
        if file is None:
            return _json(handler, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        data = file.read_bytes()
        start = 0
        ranged = handler.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0] or 0)
        handler.send_response(206 if start else 200)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("ETag", f'"{_etag(file)}"')
        handler.send_header("X-Repo-Commit", COMMIT)
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if head:
            return
        self.gets.append((name, start))
        try:
            for offset in range(start, len(data), CHUNK):
                handler.wfile.write(data[offset:offset + CHUNK])
                handler.wfile.flush()
                if self.throttle_s:
                    time.sleep(self.throttle_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away mid-file (cancel, or a stopped server)


def _etag(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _json(handler, code: int, body, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)
