"""`nfsd serve`: run the job server, on a GPU box or spawned by the Blender add-on.

Spawned mode (``--port 0 --parent-stdin``): once the server accepts connections it prints exactly one JSON
line ``{"port": N, "pid": P, "version": "…"}`` on stdout, and it exits when its stdin closes, so it never
outlives Blender. Everything else (logs) goes to stderr.

Auth: every route but /v1/health needs ``Authorization: Bearer <token>`` (``--token`` or, better, because
it stays out of ``ps``, the ``NFSD_TOKEN`` environment variable). Without a token the server only starts
on a loopback address, and then accepts any local client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from nfsd_contract import DEFAULT_MODEL, DEFAULT_PORT, DEFAULT_PRIOR, PRIORS, TOKEN_ENV
from nfsd_server.api.connections import (
    HEADER_TIMEOUT_S,
    LISTEN_BACKLOG,
    ConditionLog,
    accept_error_handler,
    connection_cap,
    guarded_protocol,
    raise_fd_limit,
)
from nfsd_server.devices import check_device
from nfsd_server.errors import UsageError
from nfsd_server.files import write_atomic


def default_data_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("nfsd")) / "jobs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"0 = any free port (default: {DEFAULT_PORT})")
    parser.add_argument("--token", default=None, help="bearer token clients must send (default: $NFSD_TOKEN)")
    parser.add_argument("--data-dir", type=Path, default=None, help="jobs and results (default: the user cache)")
    parser.add_argument("--default-prior", choices=PRIORS, default=DEFAULT_PRIOR, help="for jobs that name none")
    parser.add_argument("--default-model", default=DEFAULT_MODEL, help="for jobs that name none (hub id or folder)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default: cuda when available)")
    parser.add_argument("--parent-stdin", action="store_true", help="exit when stdin closes (for a spawning parent)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--max-queued", type=int, default=100, help="queued jobs beyond this get 429 (default: 100)")
    parser.add_argument(
        "--keep-days", type=float, default=30.0,
        help="delete finished jobs, unused uploaded meshes and unreadable job folders older than this; 0 = keep "
        "(default: 30)",
    )
    parser.add_argument(
        "--keep-jobs", type=int, default=1000, help="keep only the newest N finished jobs; 0 = all (default: 1000)"
    )
    parser.add_argument(
        "--allow-benchmark-models", action="store_true", help="let clients ask for random:* benchmark models"
    )
    parser.add_argument(
        "--header-timeout", type=float, default=HEADER_TIMEOUT_S,
        help=f"close a connection whose request headers take longer than this, in seconds (default: {HEADER_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-connections", type=int, default=None,
        help="close connections beyond this many at once (default: what the open-file limit leaves room for)",
    )
    parser.add_argument(
        "--ray", metavar="ADDRESS", default=None,
        help="run jobs concurrently on a Ray cluster: auto, local or HEAD:6379 (needs the farm extra)",
    )
    parser.add_argument(
        "--ray-workers", type=int, default=None, help="at most this many Ray workers (default: one per GPU)"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything, so it is not loopback
        return False


def allowed_hosts_for(host: str) -> frozenset[str] | None:
    """The names a ``Host`` header may carry on a server bound to ``host``: a loopback bind only answers its own
    names (a page whose domain was rebound to 127.0.0.1 sends its domain); another bind any (the token guards)."""
    if not is_loopback(host):
        return None
    return frozenset({"127.0.0.1", "localhost", "::1", host.strip("[]").lower()})


def check_writable(data_dir: Path) -> None:
    """UsageError unless a file can be written in ``data_dir`` (a read-only mount started, then answered every
    job with 507)."""
    probe = data_dir / ".nfsd-write-test"
    try:
        write_atomic(probe, b"")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"--data-dir {str(data_dir)!r} is not writable ({error.strerror or error}); pass a folder the server may write"
        ) from None


def bind_socket(host: str, port: int) -> socket.socket:
    """Bound here, not by uvicorn, so ``--port 0`` tells us the real port before we announce it."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is IPPROTO_TCP,
    # and without it a keep-alive client waits ~40 ms (Nagle + delayed ACK) on every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets on Linux
    if os.name != "nt":  # on Windows SO_REUSEADDR lets another process steal the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(False)
    return sock


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, but all to stderr: stdout carries only the spawn line."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    config["loggers"]["nfsd_server"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _claim_stdout() -> TextIO:
    """A private handle on the real stdout; fd 1 then points at stderr so no stray print can break the protocol."""
    sys.stdout.flush()
    announce = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return announce


def _exit_when_stdin_closes(server) -> None:
    fd = sys.stdin.fileno()
    try:
        while os.read(fd, 4096):
            pass
    except OSError:  # a broken stdin means the parent is gone, just like EOF
        pass
    logging.getLogger(__name__).info("stdin closed: shutting down")
    server.should_exit = True


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from nfsd_server import __version__
    from nfsd_server.api.app import ServerConfig, create_app

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is not None and (not token.isprintable() or any(char.isspace() for char in token)):
        # HTTP clients strip or reject such a header value, so no client could ever match it.
        raise UsageError(f"the token (--token or {TOKEN_ENV}) must be visible characters without spaces")
    if token is None and not is_loopback(args.host):
        raise UsageError(
            f"refusing to serve on {args.host} without a token: set NFSD_TOKEN or pass --token "
            "(only loopback addresses may run without one)"
        )
    try:
        device = str(check_device(args.device)) if args.device else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not (args.header_timeout > 0 and math.isfinite(args.header_timeout)):
        raise UsageError(f"--header-timeout must be a positive number of seconds, got {args.header_timeout}")
    if args.max_connections is not None and args.max_connections < 1:
        raise UsageError(f"--max-connections must be at least 1, got {args.max_connections}")
    if args.max_queued < 1:
        raise UsageError(f"--max-queued must be at least 1, got {args.max_queued}")
    if not (args.keep_days >= 0 and math.isfinite(args.keep_days)) or args.keep_jobs < 0:
        raise UsageError(f"--keep-days and --keep-jobs must be ≥ 0 (0 = keep), got {args.keep_days}, {args.keep_jobs}")
    data_dir = args.data_dir or default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--data-dir {str(data_dir)!r} cannot be created: {error.strerror}") from None
    check_writable(data_dir)
    executor = None
    if args.ray:
        if device is not None:
            raise UsageError("--device is for jobs run here; Ray workers each use their own GPU (drop --device)")
        from nfsd_server.farm.ray_jobs import connect_executor

        executor = connect_executor(args.ray, args.ray_workers)
    # Under the descriptor limit with room to spare, so a flood of idle connections cannot starve accept().
    max_connections = min(args.max_connections or 10**9, connection_cap(raise_fd_limit()))
    sock = bind_socket(args.host, args.port)
    if token is None:  # after every check, so a usage error stays the only line
        print("nfsd serve: no token set; any local process may use this server", file=sys.stderr)
    port = sock.getsockname()[1]
    announce = _claim_stdout()
    app = create_app(
        ServerConfig(data_dir=data_dir, token=token, default_prior=args.default_prior,
                     default_model=args.default_model, device=device, max_queued=args.max_queued,
                     retention_days=args.keep_days or None, max_finished=args.keep_jobs or None,
                     allow_benchmark_models=args.allow_benchmark_models,
                     allowed_hosts=allowed_hosts_for(args.host)),
        executor=executor,
    )

    class AnnouncingServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                # A SIGTERM that ended in a clean shutdown is a normal exit (0); uvicorn would re-raise it (-15).
                self._captured_signals = [sig for sig in self._captured_signals if sig != signal.SIGTERM]

        async def startup(self, sockets=None) -> None:
            accept_failures = ConditionLog("accept() fails: the server is out of file descriptors")
            asyncio.get_running_loop().set_exception_handler(accept_error_handler({"accept": accept_failures}))
            await super().startup(sockets=sockets)
            if self.started:  # the lifespan ran and the socket is served: now clients may come
                announce.write(json.dumps({"port": port, "pid": os.getpid(), "version": __version__}) + "\n")
                announce.flush()
                announce.close()

    config = uvicorn.Config(
        app, log_config=log_config(args.log_level), log_level=args.log_level, access_log=False,
        timeout_graceful_shutdown=5, http=guarded_protocol(max_connections, args.header_timeout),
        backlog=LISTEN_BACKLOG,
    )
    server = AnnouncingServer(config)
    if args.parent_stdin:
        threading.Thread(target=_exit_when_stdin_closes, args=(server,), name="nfsd-parent-stdin", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        if executor is not None:
            executor.close()
    return 0 if server.started else 1
