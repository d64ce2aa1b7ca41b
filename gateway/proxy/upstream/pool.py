"""Keep-alive HTTP/1.1 connections to upstreams, per origin, most recently used first; a request
that found its kept-alive connection closed before any answer is retried once when that is safe.

Must not: parse HTTP or touch a connection's bytes (gateway.proxy.upstream.wire does), reuse a connection
its exchange did not hand back, or retry a request with a body or a method that is not idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterable, Mapping

from yarl import URL

from gateway.proxy.upstream.wire import (
    Connection,
    Stale,
    UpstreamBroken,
    UpstreamResponse,
    UpstreamStalled,
    request_head,
)

__all__ = ["UpstreamBroken", "UpstreamPool", "UpstreamResponse", "UpstreamStalled"]

# RFC 9110 9.2.2; a request is only retried when it is one of these and has no body to resend.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods sent without Content-Length when they carry no body (as aiohttp's client does).
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class UpstreamPool:
    """Idle keep-alive connections per upstream origin ("http://host:port"), most recently used first."""

    def __init__(self, *, idle_timeout: float = 30.0, max_idle: int = 256) -> None:
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle
        self._idle: dict[str, list[Connection]] = {}
        self._origins: dict[str, tuple[str, int, ssl.SSLContext | None, str]] = {}
        self._open: set[Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _origin(self, origin: str) -> tuple[str, int, ssl.SSLContext | None, str]:
        found = self._origins.get(origin)
        if found is None:
            url = URL(origin)
            assert url.host is not None and url.port is not None, origin
            tls: ssl.SSLContext | None = None
            if url.scheme == "https":
                tls = self._ssl = self._ssl or ssl.create_default_context()
            host = url.host if ":" not in url.host else f"[{url.host}]"
            host_header = host if url.is_default_port() else f"{host}:{url.port}"
            found = self._origins[origin] = (url.host, url.port, tls, host_header)
        return found

    async def request(
        self, origin: str, method: str, target: str, headers: Mapping[str, str],
        body: bytes | AsyncIterable[bytes] | None, *, timeout: float | None,
    ) -> UpstreamResponse:  # fmt: skip
        """Sends one request and waits for the answer's head; the caller reads the body, then `release()`s.
        Raises UpstreamStalled, UpstreamBroken, or what the body iterator raised."""
        host, port, tls, host_header = self._origin(origin)
        if isinstance(body, bytes):
            framing = "" if "Content-Length" in headers else f"Content-Length: {len(body)}\r\n"
        elif body is not None:
            framing = "" if "Content-Length" in headers else "Transfer-Encoding: chunked\r\n"
        else:
            no_length = method in _NO_BODY_METHODS or "Content-Length" in headers
            framing = "" if no_length else "Content-Length: 0\r\n"
        head = request_head(method, target, headers, host_header, framing)
        # A request that has sent nothing that cannot be sent again may go once more on a new
        # connection when a kept-alive one turns out closed; never a body, never twice.
        retry = body is None and method in _IDEMPOTENT
        while True:
            conn = self._take(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, host, port, tls, host_header, timeout)
            try:
                return await conn.send(method, head, body, chunked=framing.startswith("Transfer"), timeout=timeout)
            except Stale:
                if reused and retry:
                    retry = False
                    continue
                raise UpstreamBroken("the upstream closed the connection") from None

    async def _connect(
        self, origin: str, host: str, port: int, tls: ssl.SSLContext | None, server_name: str, timeout: float | None
    ) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, origin), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError as exc:
            raise UpstreamStalled("the upstream did not accept the connection in time") from exc
        except OSError as exc:
            raise UpstreamBroken(f"the upstream could not be reached: {type(exc).__name__}") from exc
        return conn

    def _take(self, origin: str) -> Connection | None:
        stack = self._idle.get(origin)
        if not stack:
            return None
        now = asyncio.get_running_loop().time()
        while stack:
            conn = stack.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self._idle_timeout:
                conn.abort()
                continue
            return conn
        return None

    def opened(self, conn: Connection) -> None:
        """A new connection is up (counted, so close() can reach it)."""
        self._open.add(conn)

    def put(self, conn: Connection) -> None:
        """A connection whose exchange ended cleanly becomes idle, or is closed past the idle cap."""
        stack = self._idle.setdefault(conn.origin, [])
        if self._closed or len(stack) >= self._max_idle:
            conn.abort()
            return
        conn.idle_since = conn._last
        stack.append(conn)

    def forget(self, conn: Connection) -> None:
        """A closed connection leaves the pool."""
        self._open.discard(conn)
        stack = self._idle.get(conn.origin)
        if stack and conn in stack:
            stack.remove(conn)

    async def close(self) -> None:
        """Closes every connection, idle or busy (an exchange still running sees the upstream gone)."""
        self._closed = True
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)
