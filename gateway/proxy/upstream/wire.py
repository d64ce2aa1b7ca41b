"""One upstream HTTP/1.1 connection and the exchange on it: the request head written as given, the
answer parsed by httptools (llhttp), bodies streamed both ways with flow control, the route timeout
as one lazy timer per connection.

Must not: parse HTTP by hand (llhttp does; this module only reads the parser's callbacks), pipeline
(a connection carries one exchange at a time), hand a connection back to its pool unless its last
answer was complete and well framed and its request fully sent, or decide which headers pass (it
writes the head it is given, adding only `Host` when absent and the body's framing).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING

import httptools
from multidict import CIMultiDict

if TYPE_CHECKING:
    from gateway.proxy.upstream.pool import UpstreamPool

__all__ = ["Connection", "Stale", "UpstreamBroken", "UpstreamResponse", "UpstreamStalled", "request_head"]

# Upstream body bytes held for a slow client before the upstream socket stops being read.
_READ_HIGH_WATER = 256 * 1024
_WAIT_HEAD, _BODY, _COMPLETE, _FAILED = range(4)


class UpstreamBroken(Exception):
    """The upstream could not be reached, or broke the exchange (framing, truncation, reset)."""


class UpstreamStalled(UpstreamBroken):
    """The upstream did not connect, answer or send more within the route timeout."""


class Stale(UpstreamBroken):
    """The connection was closed by the upstream before a byte of the answer arrived."""


class UpstreamResponse:
    """One exchange: the llhttp callback target while the answer arrives, and the answer's reader."""

    __slots__ = (
        "status", "reason", "headers", "content_length", "_conn", "_parser", "_head_only", "_raw", "_reason",
        "_state", "_error", "_waiter", "_chunks", "_buffered", "_keep_alive", "_eof_body", "_informational",
        "_got_bytes", "_sent_all", "_writer",
    )  # fmt: skip

    def __init__(self, conn: Connection, method: str) -> None:
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content_length: int | None = None
        self._conn = conn
        # A parser per exchange: after a HEAD answer llhttp would still expect the announced body.
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = method == "HEAD"
        self._raw: list[tuple[str, str]] = []
        self._reason = b""
        self._state = _WAIT_HEAD
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._keep_alive = False
        self._eof_body = False
        self._informational = False
        self._got_bytes = False
        self._sent_all = False
        self._writer: asyncio.Task[None] | None = None

    # -- llhttp callbacks (names fixed by httptools) --

    def on_message_begin(self) -> None:
        if self._state != _WAIT_HEAD:
            raise UpstreamBroken("the upstream sent bytes after its answer")

    def on_status(self, data: bytes) -> None:
        self._reason += data

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamBroken("the upstream switched protocols unasked")
            # 100 Continue, 103 Early Hints: not forwarded (as aiohttp's client did); the answer follows.
            self._informational = True
            self._raw, self._reason = [], b""
            return
        length: str | None = None
        chunked = False
        for name, value in self._raw:
            low = name.lower()
            if low == "content-length":
                length = value
            elif low == "transfer-encoding":
                chunked = True
        if length is not None and chunked:
            # Two framings: whichever one a later hop believes, the other lets a response be smuggled.
            raise UpstreamBroken("the upstream sent both Content-Length and Transfer-Encoding")
        self.status = status
        self.reason = self._reason.decode("latin-1")
        self.headers = CIMultiDict(self._raw)
        self.content_length = int(length) if length is not None else None  # digits only: llhttp checked
        no_body = self._head_only or status in (204, 304)
        self._eof_body = length is None and not chunked and not no_body
        if self._head_only:
            # llhttp cannot be told that a HEAD answer has no body; it is complete here, and any
            # further byte (seen as body or a new message) marks the connection unusable.
            self._keep_alive = self._parser.should_keep_alive()
            self._finish(_COMPLETE)
        else:
            self._state = _BODY
            self._wake()

    def on_body(self, data: bytes) -> None:
        if self._state != _BODY:
            raise UpstreamBroken("the upstream sent bytes after its answer")
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _READ_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._state == _BODY:
            self._keep_alive = self._parser.should_keep_alive()
            self._finish(_COMPLETE)

    # -- state --

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self, state: int, error: BaseException | None = None) -> None:
        if self._state >= _COMPLETE:
            return
        self._state = state
        self._error = error
        self._wake()

    def _lost(self) -> None:
        """The connection closed while this exchange was using it."""
        if self._state == _WAIT_HEAD:
            self._finish(_FAILED, UpstreamBroken("the upstream closed the connection") if self._got_bytes else Stale())
        elif self._state == _BODY:
            if self._eof_body:
                self._finish(_COMPLETE)  # an answer framed by the end of the connection
            else:
                self._finish(_FAILED, UpstreamBroken("the upstream broke off its answer"))

    async def _wait(self) -> None:
        loop = self._conn.loop
        self._waiter = waiter = loop.create_future()
        await waiter

    # -- the reader's side --

    async def read(self) -> bytes:
        """The whole body (for answers known to be small)."""
        while self._state == _BODY:
            await self._wait()
        if self._state == _FAILED:
            assert self._error is not None
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; the upstream is read again once the caller has taken what is held."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                if self._conn.exchange is self:  # once back in the pool, its reading is another exchange's
                    self._conn.resume_reading()
                yield data
            elif self._state == _COMPLETE:
                return
            elif self._state == _FAILED:
                assert self._error is not None
                raise self._error
            else:
                await self._wait()

    def release(self) -> None:
        """Ends the exchange: an unfinished one takes its connection down with it."""
        conn = self._conn
        if conn.exchange is self:  # still reading or writing: the connection is in an unknown state
            conn.exchange = None
            conn.abort()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()


class Connection(asyncio.Protocol):
    """One upstream socket; idle in its pool's stack, or carrying exactly one exchange."""

    def __init__(self, pool: UpstreamPool, origin: str) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchange: UpstreamResponse | None = None
        self._read_paused = False
        self._write_paused = False
        self._client_wait = False
        self._drain: asyncio.Future[None] | None = None
        # The route timeout as one lazy timer per connection: reads only stamp `_last`, and the timer,
        # when it fires, either expires the exchange or re-arms for the gap that is left.
        self._timeout: float | None = None
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.opened(self)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            self.abort()  # bytes nobody asked for: the connection can no longer be trusted
            return
        ex._got_bytes = True
        self._last = self.loop.time()
        try:
            ex._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            ex._finish(_FAILED, UpstreamBroken("the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, UpstreamBroken) else None
            error = cause or UpstreamBroken(f"the upstream's answer is malformed: {exc}")
            if ex._state == _COMPLETE:
                # Complete, then more bytes: what is not yet relayed is refused too, and the
                # connection is dropped, so those bytes can never be read as the next answer.
                ex._state, ex._error = _FAILED, error
            else:
                ex._finish(_FAILED, error)
        if ex._state >= _COMPLETE:
            self._done(ex)

    def _done(self, ex: UpstreamResponse) -> None:
        if self.exchange is not ex:
            return
        self.exchange = None
        if ex._state == _COMPLETE and ex._keep_alive and ex._sent_all and not self.closed:
            # The last read may have paused the socket for a body the client has yet to take; that
            # body is held by the exchange now, and a paused idle connection would never read the
            # next answer.
            self.resume_reading()
            self.pool.put(self)
        else:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ex = self.exchange
        if ex is not None:
            ex._lost()
            self.exchange = None
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last = self.loop.time()
        self._wake_drain()

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain = self.loop.create_future()
            await self._drain
        if self.closed:
            raise UpstreamBroken("the upstream closed the connection")

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self._last = self.loop.time()
            if not self.closed:
                self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()

    # -- the exchange --

    async def send(
        self, method: str, head: bytes, body: bytes | AsyncIterable[bytes] | None, *,
        chunked: bool, timeout: float | None,
    ) -> UpstreamResponse:  # fmt: skip
        """Sends one request and waits for the answer's head; raises what failed the exchange."""
        ex = self.start(method, timeout)
        assert self.transport is not None
        if body is None or isinstance(body, bytes):
            self.transport.write(head + body if body else head)
            ex._sent_all = True
        else:
            self.transport.write(head)
            ex._writer = self.loop.create_task(self.send_body(ex, body, chunked))
        try:
            while ex._state == _WAIT_HEAD:
                await ex._wait()
        except BaseException:
            ex.release()
            raise
        if ex._state == _FAILED:
            ex.release()
            assert ex._error is not None
            raise ex._error
        return ex

    def start(self, method: str, timeout: float | None) -> UpstreamResponse:
        ex = self.exchange = UpstreamResponse(self, method)
        self._timeout = timeout
        self._last = now = self.loop.time()
        if timeout is not None and (self._timer is None or self._timer_at > now + timeout):
            self._arm(now + timeout)
        return ex

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        ex, timeout = self.exchange, self._timeout
        if ex is None or timeout is None or self.closed:
            return
        now = self.loop.time()
        # A pause is the client's only while it has bytes left to take; a waiting reader has taken
        # them all, so whatever it waits for has to come from the upstream.
        if self._client_wait or (self._read_paused and ex._waiter is None):
            self._last = now  # held back by the client, not by the upstream
        if now - self._last >= timeout:
            ex._finish(_FAILED, UpstreamStalled("the upstream did not answer in time"))
            self.exchange = None
            self.abort()
            return
        self._arm(self._last + timeout)

    async def send_body(self, ex: UpstreamResponse, body: AsyncIterable[bytes], chunked: bool) -> None:
        """Writes a streamed request body; its failure (or the client's) fails the exchange."""
        chunks = body.__aiter__()
        try:
            while True:
                # Waiting for the client is the client's gap (its own timeout), not the upstream's.
                self._client_wait = True
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    self._client_wait = False
                if not chunk:
                    continue
                if self.closed or self.transport is None:
                    raise UpstreamBroken("the upstream closed the connection")
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                self._last = self.loop.time()
                if self._write_paused:
                    await self.drain()
            if chunked and not self.closed and self.transport is not None:
                self.transport.write(b"0\r\n\r\n")
            self._last = self.loop.time()
            ex._sent_all = True
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: B036 - the body's own errors (client stall) are the exchange's
            ex._finish(_FAILED, exc)
            if self.exchange is ex:
                self.exchange = None
            self.abort()
        else:
            if ex._state >= _COMPLETE:
                self._done(ex)


def request_head(method: str, target: str, headers: Mapping[str, str], host: str, framing: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    if "Host" not in headers:
        lines.append(f"Host: {host}\r\n")
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    if framing:
        lines.append(framing)
    lines.append("\r\n")
    text = "".join(lines)
    # A CR or LF inside any name or value would add lines: one count refuses header injection.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a header name or value holds a line break")
    return text.encode("utf-8", "surrogateescape")
