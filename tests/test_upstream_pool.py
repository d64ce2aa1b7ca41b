"""The upstream connection pool against hostile upstreams: raw asyncio servers that write exact bytes.

Most tests drive a real gateway in front of a scripted upstream and assert what the client got and
how many upstream connections were used (reuse, drop, retry); the flow-control test drives the pool
directly and asserts that a stalled reader stops the upstream from sending.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from gateway.proxy.upstream.pool import UpstreamBroken, UpstreamPool
from tests.conftest import MakeConfig, MakeGateway

Action = bytes | None | Callable[[asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@dataclass
class Scripted:
    """A raw upstream: connection i answers its requests with script[i] in order (the last script is
    reused for further connections). An action is bytes to write, None to close without answering,
    or a coroutine function given the writer. A request past the end of a script closes the socket."""

    script: list[list[Action]]
    url: str = ""
    heads: list[list[bytes]] = field(default_factory=list)  # request heads, per connection
    bodies: list[list[bytes]] = field(default_factory=list)
    pipelined: bool = False  # a request's bytes arrived before the previous answer was written

    @property
    def connections(self) -> int:
        return len(self.heads)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[Scripted]]]:
    servers: list[asyncio.Server] = []

    async def start(*script: list[Action]) -> Scripted:
        s = Scripted(list(script))

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            index = len(s.heads)
            s.heads.append([])
            s.bodies.append([])
            actions = list(s.script[min(index, len(s.script) - 1)])
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    s.heads[index].append(head)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    s.bodies[index].append(await reader.readexactly(length) if length else b"")
                    # Anything arriving before we answer would be a pipelined request.
                    try:
                        early = await asyncio.wait_for(reader.read(1), timeout=0.02)
                    except TimeoutError:
                        early = b""
                    if early:
                        s.pipelined = True
                    if not actions:
                        break
                    action = actions.pop(0)
                    if action is None:
                        break
                    if isinstance(action, bytes):
                        writer.write(action)
                        await writer.drain()
                    else:
                        await action(writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        s.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return s

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


Gateway = Callable[[Scripted], Awaitable[aiohttp.test_utils.TestClient]]  # type: ignore[type-arg]


@pytest.fixture
def gateway_for(make_gateway: MakeGateway, make_config: MakeConfig) -> Callable[..., Awaitable[object]]:
    async def make(up: Scripted, timeout: str = "2s") -> object:
        route = {"prefix": "/r", "upstream": up.url, "auth": "public", "timeout": timeout}
        return await make_gateway(make_config(routes=[route]))

    return make


async def get(
    gw: object, path: str = "/r", method: str = "GET", **kwargs: object
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    resp = await gw.request(method, path, **kwargs)  # type: ignore[attr-defined]
    body = await asyncio.wait_for(resp.read(), timeout=10)
    return resp.status, body, resp


# --- keep-alive and retry ----------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([OK, OK, OK])
    gw = await gateway_for(up)
    for _ in range(3):
        status, body, _ = await get(gw)
        assert (status, body) == (200, b"ok")
    assert up.connections == 1
    assert len(up.heads[0]) == 3


async def test_kept_alive_connection_closed_by_upstream_retries_idempotent_once(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    # The first connection answers once, then closes on the next request without a byte of answer.
    up = await scripted([OK, None], [OK, OK])
    gw = await gateway_for(up)
    assert (await get(gw))[:2] == (200, b"ok")
    status, body, _ = await get(gw)
    assert (status, body) == (200, b"ok")
    assert up.connections == 2
    assert [len(h) for h in up.heads] == [2, 1]


async def test_kept_alive_connection_closed_before_post_with_body_is_502_not_resent(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([OK, None], [OK, OK])
    gw = await gateway_for(up)
    assert (await get(gw))[:2] == (200, b"ok")
    status, body, _ = await get(gw, method="POST", data=b"payment=1")
    assert status == 502
    assert b"bad_gateway" in body
    assert up.connections == 1  # never sent again on a fresh connection
    assert up.bodies[0][1] == b"payment=1"


async def test_fresh_connection_closed_without_answer_is_502_not_retried(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([None])
    gw = await gateway_for(up)
    status, _, _ = await get(gw)
    assert status == 502
    assert up.connections == 1


async def test_retry_happens_once_only(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([OK, None], [None])
    gw = await gateway_for(up)
    assert (await get(gw))[:2] == (200, b"ok")
    assert (await get(gw))[0] == 502
    assert up.connections == 2


# --- framing: well-formed -----------------------------------------------------------------------------


async def test_connection_close_answer_is_relayed_and_not_reused(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    up = await scripted([closing, OK], [OK])
    gw = await gateway_for(up)
    status, body, resp = await get(gw)
    assert (status, body) == (200, b"ok")
    assert "Connection" not in resp.headers or resp.headers["Connection"].lower() != "close"
    assert (await get(gw))[:2] == (200, b"ok")
    assert up.connections == 2
    assert [len(h) for h in up.heads] == [1, 1]


async def test_answer_framed_by_close_is_complete(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    async def until_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    up = await scripted([until_close])
    gw = await gateway_for(up)
    assert (await get(gw))[:2] == (200, b"until the end")


async def test_informational_answers_are_skipped_and_connection_reused(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    up = await scripted([interim + OK, OK])
    gw = await gateway_for(up)
    status, body, resp = await get(gw)
    assert (status, body) == (200, b"ok")
    assert "Link" not in resp.headers
    assert (await get(gw))[:2] == (200, b"ok")
    assert up.connections == 1


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5000\r\n\r\n",
])  # fmt: skip
async def test_204_and_304_have_no_body_and_keep_the_connection(scripted, gateway_for, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([answer, OK])
    gw = await gateway_for(up)
    status, body, _ = await get(gw)
    assert status in (204, 304)
    assert body == b""
    assert (await get(gw))[:2] == (200, b"ok")
    assert up.connections == 1


async def test_head_answer_with_length_has_no_body_and_keeps_the_connection(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\nContent-Type: text/plain\r\n\r\n", OK])
    gw = await gateway_for(up)
    status, body, resp = await get(gw, method="HEAD")
    assert status == 200
    assert body == b""
    assert resp.headers["Content-Length"] == "123456"
    assert up.heads[0][0].startswith(b"HEAD /r HTTP/1.1\r\n")
    assert (await get(gw))[:2] == (200, b"ok")
    assert up.connections == 1


async def test_slow_steady_body_passes_although_longer_than_the_timeout(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    # The route timeout bounds each gap between reads, not the whole answer.
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0.35)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    up = await scripted([trickle])
    gw = await gateway_for(up, timeout="1s")
    started = time.monotonic()
    assert (await get(gw))[:2] == (200, b"xxxxx")
    assert time.monotonic() - started > 1.5


# --- framing: hostile ---------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
], ids=["cl-then-te", "te-then-cl", "bad-chunk-size", "chunk-overrun", "two-lengths"])  # fmt: skip
async def test_ambiguous_or_broken_framing_is_502_and_connection_dropped(scripted, gateway_for, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([answer, OK], [OK])
    gw = await gateway_for(up)
    status, body, _ = await get(gw)
    assert status == 502
    assert b"bad_gateway" in body
    assert (await get(gw))[:2] == (200, b"ok")
    assert up.connections == 2


async def test_bytes_after_the_end_are_502_and_connection_dropped(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    smuggled = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
    up = await scripted([smuggled, OK], [OK])
    gw = await gateway_for(up)
    status, _, _ = await get(gw)
    assert status == 502
    status, body, _ = await get(gw)
    assert (status, body) == (200, b"ok")  # never the forged answer
    assert up.connections == 2


async def test_bytes_arriving_while_idle_drop_the_connection(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    async def late(writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
        await writer.drain()

    up = await scripted([late, OK], [OK])
    gw = await gateway_for(up)
    assert (await get(gw))[:2] == (200, b"ok")
    await asyncio.sleep(0.4)
    assert (await get(gw))[:2] == (200, b"ok")
    assert up.connections == 2


async def test_truncated_large_body_aborts_client_and_connection_not_reused(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 100000)
        await writer.drain()
        writer.transport.abort()

    up = await scripted([cut], [OK])
    gw = await gateway_for(up)
    resp = await gw.get("/r")  # type: ignore[attr-defined]
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), timeout=10)
    assert (await get(gw))[:2] == (200, b"ok")
    assert up.connections == 2


async def test_stalled_small_body_is_504_and_connection_not_reused(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    async def stall(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
        await writer.drain()
        await asyncio.sleep(3)

    up = await scripted([stall, OK], [OK])
    gw = await gateway_for(up, timeout="1s")
    started = time.monotonic()
    status, _, _ = await get(gw)
    assert status == 504
    assert time.monotonic() - started < 2.5
    assert (await get(gw))[:2] == (200, b"ok")
    assert up.connections == 2


async def test_unasked_protocol_switch_is_502(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"])
    gw = await gateway_for(up)
    assert (await get(gw))[0] == 502


async def test_concurrent_requests_are_never_pipelined(scripted, gateway_for) -> None:  # type: ignore[no-untyped-def]
    async def slow_ok(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(OK)
        await writer.drain()

    up = await scripted([slow_ok] * 50)
    gw = await gateway_for(up)
    for _ in range(2):
        results = await asyncio.gather(*(get(gw) for _ in range(10)))
        assert all(r[:2] == (200, b"ok") for r in results)
    assert not up.pipelined
    assert sum(len(h) for h in up.heads) == 20
    assert up.connections <= 10  # the second wave reused the first wave's connections


# --- the pool directly: flow control and request framing ---------------------------------------------


async def test_large_answer_is_streamed_with_bounded_buffering(scripted) -> None:  # type: ignore[no-untyped-def]
    total = 64 * 1024 * 1024
    sent = 0

    async def big(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"z" * (256 * 1024)
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    up = await scripted([big])
    pool = UpstreamPool()
    try:
        resp = await pool.request(up.url, "GET", "/big", {}, None, timeout=5)
        assert resp.content_length == total
        got = 0
        chunks = resp.chunks()
        got += len(await chunks.__anext__())
        await asyncio.sleep(0.5)  # a stalled reader: the upstream must be held back, not buffered
        held = sent - got
        assert held < 16 * 1024 * 1024, held
        async for chunk in chunks:
            got += len(chunk)
        assert got == total
        resp.release()
    finally:
        await pool.close()


@pytest.mark.parametrize("read_first", [True, False], ids=["read-then-next", "next-while-held"])
async def test_connection_paused_by_the_answers_last_read_serves_the_next_request(scripted, read_first: bool) -> None:  # type: ignore[no-untyped-def]
    # The read that takes the held body past the high-water mark pauses the socket; here it is also
    # the answer's last, so the connection goes back to the pool with the body still held.
    body = bytes(range(256)) * (257 * 4)  # 257 KiB: just over the 256 KiB high-water mark
    tail_sent = asyncio.Event()

    async def big(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:-2048])
        await writer.drain()
        await asyncio.sleep(0.2)  # all below the mark is read and held before the last 2 KiB
        writer.write(body[-2048:])
        await writer.drain()
        tail_sent.set()

    up = await scripted([big, OK])
    pool = UpstreamPool()
    try:
        first = await pool.request(up.url, "GET", "/big", {}, None, timeout=2)
        if read_first:
            assert await asyncio.wait_for(first.read(), timeout=10) == body
        else:  # a slow client still holds the first body when the next request takes the connection
            await asyncio.wait_for(tail_sent.wait(), timeout=10)
            await asyncio.sleep(0.2)
        first.release()
        second = await asyncio.wait_for(pool.request(up.url, "GET", "/next", {}, None, timeout=2), timeout=10)
        assert second.status == 200
        assert await asyncio.wait_for(second.read(), timeout=10) == b"ok"
        second.release()
        if not read_first:
            assert b"".join([chunk async for chunk in first.chunks()]) == body
    finally:
        await pool.close()
    assert up.connections == 1
    assert [head.split(b" ")[1] for head in up.heads[0]] == [b"/big", b"/next"]


async def test_request_framing_and_host(scripted) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([OK, OK, OK, OK])
    pool = UpstreamPool()

    async def body() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cde"

    try:
        for method, payload in (("POST", None), ("PUT", b"xyz"), ("GET", None)):
            resp = await pool.request(up.url, method, "/p?q=1", {"X-A": "1"}, payload, timeout=5)
            assert await resp.read() == b"ok"
            resp.release()
        resp = await pool.request(up.url, "POST", "/c", {}, body(), timeout=5)
        assert await resp.read() == b"ok"
        resp.release()
    finally:
        await pool.close()
    port = up.url.rsplit(":", 1)[1]
    post, put, get_, chunked = up.heads[0][:4]  # (the chunked body follows; this server reads no chunks)
    assert post.startswith(b"POST /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\nX-A: 1\r\n")
    assert b"Content-Length: 0\r\n" in post
    assert b"Content-Length: 3\r\n" in put and up.bodies[0][1] == b"xyz"
    assert b"Content-Length" not in get_ and b"Transfer-Encoding" not in get_
    assert b"Transfer-Encoding: chunked\r\n" in chunked


async def test_header_line_break_is_refused_before_sending(scripted) -> None:  # type: ignore[no-untyped-def]
    up = await scripted([OK])
    pool = UpstreamPool()
    try:
        with pytest.raises(ValueError):
            await pool.request(up.url, "GET", "/", {"X-A": "1\r\nX-Injected: 1"}, None, timeout=5)
    finally:
        await pool.close()
    assert up.connections == 0


async def test_refused_connection_is_upstream_broken() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = UpstreamPool()
    try:
        with pytest.raises(UpstreamBroken):
            await pool.request(f"http://127.0.0.1:{port}", "GET", "/", {}, None, timeout=2)
    finally:
        await pool.close()
