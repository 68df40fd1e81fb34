"""What keeps the server up under hostile or broken clients: a request-body bound, a connection
cap, a deadline for a connection's first request headers, and logs that cannot flood.

- `BodyLimit` (ASGI middleware): a body over `max_bytes` is a 413 and is never kept (known by
  its Content-Length, or as a chunked body crosses the bound; what the client still sends is
  dropped for a few seconds so that it can read the answer); a body that takes longer than
  `timeout_s` to arrive is a 408.
- `guarded_protocol(...)`: uvicorn's HTTP protocol with a connection cap (connections past it
  are closed as they are accepted) and a header deadline (a connection that has not sent its
  first request's headers in time is closed: half-open and slowloris connections cannot pile up
  until the process runs out of file descriptors).
- `raise_fd_limit()`: the soft file-descriptor limit raised to the hard one.
Repeated warnings (the cap, asyncio's "socket.accept() out of system resource") are logged at
most once per interval (`storage.log_limits`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

from engine.http.common import error_response
from storage.log_limits import limit_repeats

log = logging.getLogger(__name__)
DRAIN_S, DRAIN_FACTOR = 5.0, 4  # after a 413, what is still read (and dropped) at most


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413) or slower than `timeout_s` (408)."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 60.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive)
            return await _error(send, 413, self._too_large())
        # the whole body, bounded in size and time, read here; then replayed to the app (which
        # would turn an error raised while it reads into a 400 of its own)
        body, deadline = [], time.monotonic() + self.timeout_s
        seen, more = 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                return await _error(send, 408, "the request body did not arrive in time")
            if message["type"] != "http.request":  # the client left before its body was in
                return
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._drain(receive, message.get("more_body", False))
                return await _error(send, 413, self._too_large())
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()  # then: disconnects only

        await self.app(scope, replayed, send)

    async def _drain(self, receive, more: bool = True) -> None:
        """Before a 413: read and drop (never keep) what the client is still sending, up to 4x
        the bound or 5 s, so that a client that writes its whole body before it reads (most do)
        gets the 413 rather than a reset connection; the connection closes after it."""
        dropped, deadline = 0, time.monotonic() + DRAIN_S
        while more and dropped <= DRAIN_FACTOR * self.max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                return
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            more = message.get("more_body", False)

    def _too_large(self) -> str:
        return f"the request body is larger than this server takes ({self.max_bytes} bytes)"


async def _error(send, status: int, message: str) -> None:
    """The server's usual error body; the connection closes after it (its body is unread)."""
    response = error_response(status, message, "invalid_request_error")
    response.headers["connection"] = "close"
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


limit_repeats(log, "connection cap", 10.0)


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap and a deadline for the first headers."""

    class Guarded(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.header_timer = None
            if len(self.connections) > max_connections:
                log.warning(
                    "connection cap (%d) reached: closing a new connection", max_connections
                )
                transport.close()
                return
            self.header_timer = self.loop.call_later(header_timeout_s, self.headers_too_slow)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.header_timer is not None and self.cycle is not None:  # headers are in
                self.header_timer.cancel()
                self.header_timer = None

        def connection_lost(self, exc) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None
            super().connection_lost(exc)

        def headers_too_slow(self) -> None:
            self.header_timer = None
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

    return Guarded


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft
