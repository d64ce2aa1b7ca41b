"""Owns the behavioural tests for the bundled demo upstream server.

Must not: import anything from `gateway`, or depend on a proxy being present.
"""

import asyncio
import gzip
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from upstream_demo import create_app

__all__: list[str] = []

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    """Run the demo app on a real port for each test."""
    return await aiohttp_client(create_app())


async def _raw_exchange(client: TestClient[Any, Any], request_bytes: bytes) -> tuple[bytes, bytes]:
    """Send hand-written HTTP bytes, bypassing the client's URL normalisation."""
    # aiohttp's client (via yarl) would rewrite "//" and percent-escapes, hiding what we test.
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request_bytes)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _sep, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_echo_post_with_body_reports_method_path_query_headers_and_digest(
    client: TestClient[Any, Any],
) -> None:
    body = b"hello upstream " * 10_000
    resp = await client.post("/api/echo?a=1&b=two", data=body, headers={"X-Custom": "yes"})
    assert resp.status == 200
    data = await resp.json()
    assert data["method"] == "POST"
    assert data["path"] == "/api/echo"
    assert data["query"] == "a=1&b=two"
    assert data["headers"]["X-Custom"] == "yes"
    assert data["body_length"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_echo_odd_raw_path_is_reported_verbatim(client: TestClient[Any, Any]) -> None:
    head, body = await _raw_exchange(
        client,
        b"PATCH /base/a%2Fb//c%25d?x=%2F HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        b"Connection: close\r\n\r\nabc",
    )
    # An unknown path: 404 JSON, which still describes the raw request as received.
    assert head.startswith(b"HTTP/1.1 404 ")
    data = json.loads(body)["request"]
    assert data["method"] == "PATCH"
    assert data["path"] == "/base/a%2Fb//c%25d"
    assert data["query"] == "x=%2F"
    assert data["body_sha256"] == hashlib.sha256(b"abc").hexdigest()


async def test_echo_repeated_header_values_are_joined_under_first_name(
    client: TestClient[Any, Any],
) -> None:
    _head, body = await _raw_exchange(
        client,
        b"GET /api/whoami HTTP/1.1\r\nHost: t\r\nX-Multi: one\r\nx-multi: two\r\n"
        b"content-type: text/plain\r\nConnection: close\r\n\r\n",
    )
    headers = json.loads(body)["headers"]
    assert headers["X-Multi"] == "one, two"
    assert "x-multi" not in headers
    # Case as sent survives, even for names aiohttp would canonicalise.
    assert headers["content-type"] == "text/plain"


async def test_unknown_path_is_404_json_as_a_real_api(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/other")
    assert resp.status == 404
    answer = await resp.json()
    assert (answer["error"], answer["error_description"]) == ("not_found", "no such path")
    data = answer["request"]
    assert (data["path"], data["query"], data["body_length"]) == ("/other", "", 0)
    assert (await client.post("/api/nope", data=b"x")).status == 404
    assert (await client.get("/api/whoami")).status == 200


async def test_root_serves_the_demo_page(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert "/auth/client.js" in page and 'id="login-form"' in page


async def test_public_hello_get_includes_greeting_and_request(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/public/hello", headers={"X-Seen": "1"})
    data = await resp.json()
    assert data["hello"] == "world"
    assert data["request"]["path"] == "/public/hello"
    assert data["request"]["headers"]["X-Seen"] == "1"


@pytest.mark.parametrize("size", [0, 1, 65_536, 200_001])
async def test_stream_valid_size_returns_exactly_n_bytes(client: TestClient[Any, Any], size: int) -> None:
    resp = await client.get(f"/api/stream?bytes={size}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    payload = await resp.read()
    assert len(payload) == size


async def test_stream_default_size_returns_1024_bytes(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/stream")
    assert len(await resp.read()) == 1024


@pytest.mark.parametrize("value", ["-1", "abc", "+5", str(10 * 1024**3 + 1)])
async def test_stream_bad_size_returns_400_json(client: TestClient[Any, Any], value: str) -> None:
    resp = await client.get("/api/stream", params={"bytes": value})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"


@pytest.mark.parametrize("value", ["-0.5", "301", "nan", "inf", "soon"])
async def test_slow_bad_seconds_returns_400_json(client: TestClient[Any, Any], value: str) -> None:
    resp = await client.get("/api/slow", params={"seconds": value})
    assert resp.status == 400
    data = await resp.json()
    assert data["error"] == "invalid_request"
    assert data["error_description"]


async def test_slow_small_delay_reports_slept_seconds(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/slow?seconds=0.05")
    assert resp.status == 200
    assert await resp.json() == {"slept": 0.05}


async def test_ws_text_and_binary_are_echoed(client: TestClient[Any, Any]) -> None:
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_str("ping")
        assert (await ws.receive()).data == "ping"
        await ws.send_bytes(b"\x00\xffdata")
        msg = await ws.receive()
        assert msg.type is WSMsgType.BINARY
        assert msg.data == b"\x00\xffdata"


async def test_ws_close_request_closes_with_given_code(client: TestClient[Any, Any]) -> None:
    ws = await client.ws_connect("/api/ws")
    await ws.send_str("close:4001")
    msg = await ws.receive()
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == 4001
    await ws.close()
    assert ws.close_code == 4001


async def test_set_cookie_request_returns_both_cookie_headers(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/set-cookie?name=session&value=abc123")
    assert resp.status == 200
    assert await resp.json() == {"ok": True}
    assert resp.headers.getall("Set-Cookie") == ["session=abc123; Path=/", "demo=1; Path=/"]


async def test_set_cookie_missing_name_returns_400(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/set-cookie?value=x")
    assert resp.status == 400


async def test_gzip_without_auto_decompress_body_stays_compressed(
    aiohttp_client: ClientFactory,
) -> None:
    raw_client = await aiohttp_client(create_app(), auto_decompress=False)
    resp = await raw_client.get("/api/gzip")
    assert resp.headers["Content-Encoding"] == "gzip"
    body = await resp.read()
    assert body[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(body))["compressed"] is True


async def test_redirect_get_returns_302_to_whoami(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/api/whoami"


async def test_stream_head_sends_headers_without_body(client: TestClient[Any, Any]) -> None:
    resp = await client.head("/api/stream?bytes=5000")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "5000"
    assert await resp.read() == b""
    assert (await client.get("/api/whoami")).status == 200  # the connection was left clean
