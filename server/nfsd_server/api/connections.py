"""What a slow, idle or flooding client may hold: a deadline for each request's headers, a cap on open
connections below the process's file-descriptor limit, and one log line per condition instead of one per event.

uvicorn's own limits do not cover these: its keep-alive timeout starts only after a first response (a client
that connects and sends nothing, or a byte a second, was held forever), and it accepts connections until
``accept()`` fails for want of descriptors, at which point every real request times out while asyncio logs a
traceback per failed accept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0  # from a connection's first byte (or its opening) to the end of a request's headers
LISTEN_BACKLOG = 128  # connections the kernel queues; accepted in bursts of up to this many before any is closed
FD_RESERVE = 256  # descriptors kept for everything else: job files, model weights, logs, the event loop
FD_TARGET = 65536  # the soft limit asked for at start (never above the hard limit)
MAX_CONNECTIONS = 4096  # a desktop's or a small farm's clients, with room to spare


def raise_fd_limit(target: int = FD_TARGET) -> int:
    """Raise the soft limit on open files toward ``target`` where the hard limit allows; the soft limit now."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return MAX_CONNECTIONS + LISTEN_BACKLOG + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError) as error:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, wanted, error)
    return soft


def connection_cap(fd_limit: int) -> int:
    """Open connections allowed under ``fd_limit``: a burst of accepts and the reserve must still fit."""
    return max(1, min(MAX_CONNECTIONS, fd_limit - LISTEN_BACKLOG - FD_RESERVE))


class ConditionLog:
    """Logs a condition when it starts, then at most once per ``every_s`` with how often it recurred."""

    def __init__(self, message: str, every_s: float = 60.0):
        self.message, self.every_s = message, every_s
        self.logged_at: float | None = None
        self.unlogged = 0

    def report(self, detail: Any = None) -> None:
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < self.every_s:
            self.unlogged += 1
            return
        again = f" ({self.unlogged} more times since the last report)" if self.unlogged else ""
        log.warning("%s%s%s", self.message, f": {detail}" if detail is not None else "", again)
        self.logged_at, self.unlogged = now, 0


def accept_error_handler(conditions: dict[str, ConditionLog]):
    """An event-loop exception handler that turns asyncio's traceback per failed ``accept()`` into one line per
    minute; anything else goes to the default handler."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            conditions["accept"].report(context.get("exception"))
        else:
            loop.default_exception_handler(context)

    return handle


def guarded_protocol(max_connections: int, header_timeout_s: float = HEADER_TIMEOUT_S) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol that closes a connection beyond ``max_connections`` at once and one whose
    request headers are not complete ``header_timeout_s`` after its first byte (or its opening)."""
    conditions = {
        "cap": ConditionLog(f"{max_connections} connections are open (the cap); closing new ones at once"),
        "slow": ConditionLog(f"closed connections that sent no complete request headers in {header_timeout_s:g} s"),
    }

    class GuardedH11Protocol(H11Protocol):
        header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                self.transport = transport  # connection_lost closes it again
                transport.abort()  # its descriptor is free now, not after a handshake
                conditions["cap"].report()
                return
            super().connection_made(transport)
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            if self.header_deadline is None and self._awaiting_headers():
                self._arm_header_deadline()  # a kept-alive connection's next request starts
            super().data_received(data)
            if not self._awaiting_headers():
                self._disarm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self.header_deadline = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm_header_deadline(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def _headers_too_slow(self) -> None:
            self.header_deadline = None
            if self._awaiting_headers() and not self.transport.is_closing():
                conditions["slow"].report()
                self.transport.close()

    return GuardedH11Protocol
