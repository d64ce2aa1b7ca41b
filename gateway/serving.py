"""Serving an app on a socket with connection guards: a cap on open connections and a deadline for
each request's headers, answered with JSON, so slow or numerous clients cannot pin the gateway.

Must not: parse HTTP (aiohttp does); it only counts connections and watches the time from a
connection's start, or from the end of its last response, to the next request reaching the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit

__all__ = ["ConnectionGuard", "request_finished", "request_started", "serve"]

_GUARDED: dict[asyncio.BaseTransport, _Guarded] = {}


def _canned(status: int, reason: str, code: str, description: str) -> bytes:
    """A complete, fixed JSON answer for a connection the app never sees."""
    body = json.dumps({"error": code, "error_description": description}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\nCache-Control: no-store\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_MANY = _canned(503, "Service Unavailable", "too_many_connections", "the gateway has too many open connections")
_TOO_SLOW = _canned(408, "Request Timeout", "request_timeout", "the request headers did not arrive in time")


def request_started(transport: asyncio.BaseTransport | None) -> None:
    """The app got a whole request on this connection: its header deadline is met."""
    guarded = _GUARDED.get(transport) if transport is not None else None
    if guarded is not None:
        guarded.cancel_deadline()


def request_finished(transport: asyncio.BaseTransport | None) -> None:
    """A response went out: the next request on this connection has its own deadline."""
    guarded = _GUARDED.get(transport) if transport is not None else None
    if guarded is not None:
        guarded.start_deadline()


class ConnectionGuard:
    """Counts open connections; `max_connections` and `header_timeout` (seconds) bound them."""

    def __init__(self, *, max_connections: int, header_timeout: float, idle_allowance: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        # After a response, a keep-alive connection may idle (aiohttp's keepalive_timeout) before
        # the next request begins; the deadline for that request's headers adds this allowance.
        self.idle_allowance = idle_allowance
        self.open = 0

    def wrap(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """A protocol factory that guards every request handler `server` would make."""
        # The same arguments web.Server.__call__ passes, so our subclass behaves as its own would.
        kwargs: dict[str, Any] = getattr(server, "_kwargs", {})
        loop = asyncio.get_running_loop()

        def make() -> asyncio.Protocol:
            if self.open >= self.max_connections:
                return _Refuse()
            return _Guarded(self, _JsonErrorHandler(server, loop=loop, **kwargs))

        return make


class _JsonErrorHandler(web.RequestHandler):
    """aiohttp's request handler, answering what its parser rejects (oversized or malformed request
    line and headers) with the gateway's JSON error body instead of plain text."""

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, and refuses if already sent
        code = {400: "invalid_request", 413: "payload_too_large", 431: "invalid_request"}.get(status, "server_error")
        description = "the request could not be parsed" if status < 500 else "internal error"
        response = web.json_response({"error": code, "error_description": description}, status=plain.status)
        response.force_close()
        return response


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        transport.write(_TOO_MANY)
        transport.close()


class _Guarded(asyncio.Protocol):
    """Forwards every event to aiohttp's protocol; closes the connection with 408 past the deadline."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: Any = None  # asyncio's or uvloop's transport (uvloop's are not WriteTransport subclasses)
        self._timer: asyncio.TimerHandle | None = None
        self._first = True

    def connection_made(self, transport: Any) -> None:
        self._guard.open += 1
        self._transport = transport
        _GUARDED[transport] = self
        self.start_deadline()
        self._inner.connection_made(transport)

    def start_deadline(self) -> None:
        self.cancel_deadline()
        delay = self._guard.header_timeout + (0 if self._first else self._guard.idle_allowance)
        self._first = False
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def cancel_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_TOO_SLOW)
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        self._guard.open -= 1
        if self._transport is not None:
            _GUARDED.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _GuardedSite(web.TCPSite):
    """aiohttp's TCP site with the runner's protocol factory wrapped by a ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(runner, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.wrap(server),
            self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )  # fmt: skip


def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    loop: asyncio.AbstractEventLoop,
    guard: ConnectionGuard,
    ssl_context: ssl.SSLContext | None,
    reuse_port: bool,
    shutdown_timeout: float,
    on_listening: Callable[[], None],
) -> None:
    """Runs `app` until SIGTERM/SIGINT, then shuts down gracefully (as aiohttp's run_app does)."""

    async def main() -> None:
        runner = web.AppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        try:
            site = _GuardedSite(runner, guard, host=host, port=port, ssl_context=ssl_context, reuse_port=reuse_port or None)
            await site.start()
            on_listening()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    # The same shape as aiohttp's run_app: the signal handler raises GracefulExit out of the loop,
    # then the main task is cancelled so that its `finally` runs the runner's graceful cleanup.
    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
        finally:
            rest = asyncio.all_tasks(loop)
            for t in rest:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

