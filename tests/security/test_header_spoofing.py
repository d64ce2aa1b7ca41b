"""Attack tests for the request-header policy (SPEC "Proxying"): no spelling of an identity or
forwarding header that a client sends reaches the upstream, on any route kind.

The client side writes raw bytes over a socket (aiohttp's client would normalise names and refuse
odd bytes); the upstream side is a raw recorder that keeps the request head exactly as received,
so the assertions see what a WSGI/CGI/PHP server would read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.proxy.headers import encode_identity, fold
from tests.conftest import MakeGateway
from tests.support import FakeClock, build_config, mint

Client = TestClient[Any, Any]
EVIL = "ATTACKER"
# Names the gateway sets, folded; a client copy of any of them in any spelling must not pass.
PROTECTED = {"x-user-id", "x-user-email", "x-session-id", "x-user-roles", "x-client-id", "x-token-scopes",
             "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}  # fmt: skip
# Every spelling a WSGI/CGI server (HTTP_X_USER_ID) or PHP ($_SERVER, which also maps `.`) reads as ours.
SPELLINGS = [
    "X_User_Id", "x_user_id", "X-User_Id", "X_USER_ID", "X.User.Id", "x.user-id", "x-USER-id", "X-User-Id",
    "X_User_Email", "X.User.Email", "x-user-email", "X_Session_Id", "X-Session.Id",
    "X_Forwarded_Proto", "X-Forwarded_Host", "X.Forwarded.For", "X-Forwarded-Proto", "X-Forwarded-Host",
    "X-Forwarded-For", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server", "X_Forwarded_Prefix",
    "X-User-Roles", "X_User_Roles", "x.user.roles", "X-Client-Id", "X_Client_Id", "X-Token-Scopes", "X.Token_Scopes",
    "Forwarded", "X-Real-IP", "X_Real_IP", "x-real.ip", "X_Request_Id",
]  # fmt: skip


class Recorder:
    """A raw upstream: records each request head byte for byte, answers 200 `ok`."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def last_fields(self) -> list[tuple[str, str]]:
        assert self.heads, "the upstream received no request"
        lines = self.heads[-1].decode("latin-1").split("\r\n")[1:]
        return [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines if line)]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    yield rec
    if rec.server is not None:
        rec.server.close()
        await rec.server.wait_closed()


async def _gateway(make_gateway: MakeGateway, tmp_path: Any, recorder: Recorder, **tables: Any) -> Client:
    url = await recorder.start()
    routes = [
        {"prefix": "/api", "upstream": url, "auth": "required", "timeout": "5s"},
        {"prefix": "/public", "upstream": url, "auth": "public"},
        {"prefix": "/opt", "upstream": url, "auth": "optional"},
    ]
    return await make_gateway(build_config(tmp_path, url, routes=routes, **tables))


async def send_raw(client: Client, head: bytes) -> bytes:
    """Writes `head` (request line and fields, without the final blank line) and returns the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def _request(path: str, fields: list[bytes], token: str | None = None, ws: bool = False) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if token:
        lines.append(f"Authorization: Bearer {token}".encode())
    if ws:
        lines += [b"Upgrade: websocket", b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
    return b"\r\n".join(lines + fields)


ROUTE_KINDS = [
    pytest.param("/public/x", False, False, id="public"),
    pytest.param("/opt/x", False, False, id="optional-anonymous"),
    pytest.param("/opt/x", True, False, id="optional-authenticated"),
    pytest.param("/api/x", True, False, id="required"),
    pytest.param("/api/x", True, True, id="websocket-handshake"),
]


def assert_no_forgery(recorder: Recorder, answer: bytes, *, authenticated: bool) -> None:
    """Either the gateway refused the request, or nothing the attacker wrote reached the upstream."""
    status = int(answer.split(b" ", 2)[1])
    if status == 400:
        return
    assert recorder.heads, answer
    head = recorder.heads[-1].decode("latin-1")
    assert EVIL not in head, head
    fields = recorder.last_fields()
    folded = [fold(n) for n, _ in fields]
    for name in ("forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server"):
        assert name not in folded, head
    for name in PROTECTED:
        assert folded.count(name) <= 1, head
    # Every protected field the upstream got is spelled the gateway's way, never a client's variant.
    for (name, _), f in zip(fields, folded, strict=True):
        if f in PROTECTED:
            assert name in {"X-User-Id", "X-User-Email", "X-Session-Id", "X-User-Roles", "X-Forwarded-For",
                            "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id"}, head  # fmt: skip
    values = {fold(n): v for n, v in fields}
    if authenticated:
        assert values["x-user-id"] == "user-1"
        assert values["x-session-id"] == "session-1"
        assert values["x-user-roles"] == ""  # the minted token has no roles; the client's "ATTACKER" is gone
    else:
        assert "x-user-id" not in values and "x-user-roles" not in values
    # A user's request never carries the machine-client headers, whatever the client wrote.
    assert "x-client-id" not in values and "x-token-scopes" not in values
    assert values["x-forwarded-for"] == "127.0.0.1"
    assert values["x-forwarded-proto"] == "http"
    assert values["x-forwarded-host"] == "127.0.0.1"


@pytest.mark.parametrize(("path", "auth", "ws"), ROUTE_KINDS)
async def test_no_spelling_of_a_gateway_header_passes(
    make_gateway: MakeGateway, tmp_path: Any, recorder: Recorder, clock: FakeClock, path: str, auth: bool, ws: bool
) -> None:
    client = await _gateway(make_gateway, tmp_path, recorder)
    token = mint(now=clock.now) if auth else None
    fields = [f"{name}: {EVIL}".encode() for name in SPELLINGS]
    answer = await send_raw(client, _request(path, fields, token, ws))
    assert answer.startswith(b"HTTP/1."), answer
    # The upstream recorder does not speak WebSocket: the handshake it saw is what counts.
    assert_no_forgery(recorder, answer, authenticated=auth)
    assert len(recorder.heads) == 1


TRICKS = [
    pytest.param([b"X-User-Id : " + EVIL.encode()], id="space-before-colon"),
    pytest.param([b"X-User-Id\t: " + EVIL.encode()], id="tab-before-colon"),
    pytest.param([b" X-User-Id: " + EVIL.encode()], id="leading-space"),
    pytest.param([b"X-Other: a", b" X-User-Id: " + EVIL.encode()], id="obs-fold-continuation"),
    pytest.param([b"X-Other: a", b"\tX_User_Id: " + EVIL.encode()], id="obs-fold-tab"),
    pytest.param([b"X-User-Id: " + EVIL.encode(), b"x-user-id: " + EVIL.encode()], id="duplicates"),
    pytest.param([b"X-User-Id: " + EVIL.encode(), b"X_User_Id: " + EVIL.encode()], id="duplicate-underscore"),
    pytest.param([b"Connection: X-User-Id, X_User_Email", b"X-User-Id: " + EVIL.encode()], id="connection-named"),
    pytest.param([b"Connection: keep-alive, X-Evil", b"X-Evil: " + EVIL.encode()], id="connection-named-other"),
    pytest.param([b"X-User-Id\x00: " + EVIL.encode()], id="nul-in-name"),
    pytest.param([b"X-User-Id\xc2\xa0: " + EVIL.encode()], id="nbsp-in-name"),
    pytest.param([b"X-User\xadId: " + EVIL.encode()], id="soft-hyphen"),
    pytest.param([b"X-User-Id;: " + EVIL.encode()], id="semicolon"),
    pytest.param([b"X~User~Id: " + EVIL.encode(), b"X+User+Id: " + EVIL.encode()], id="other-tchars-kept-apart"),
    pytest.param([b"X-USER-ID: " + EVIL.encode()], id="upper-case"),
]


@pytest.mark.parametrize("trick", TRICKS)
@pytest.mark.parametrize(("path", "auth", "ws"), ROUTE_KINDS)
async def test_odd_bytes_and_framing_tricks(
    make_gateway: MakeGateway, tmp_path: Any, recorder: Recorder, clock: FakeClock,
    path: str, auth: bool, ws: bool, trick: list[bytes],
) -> None:  # fmt: skip
    client = await _gateway(make_gateway, tmp_path, recorder)
    token = mint(now=clock.now) if auth else None
    answer = await send_raw(client, _request(path, trick, token, ws))
    assert answer.startswith(b"HTTP/1."), answer
    status = int(answer.split(b" ", 2)[1])
    if status == 400:
        assert not recorder.heads
        return
    head = recorder.heads[-1].decode("latin-1") if recorder.heads else ""
    if b"X~User~Id" in trick[0]:
        # Names no WSGI/CGI/PHP server folds into ours pass untouched; only our own names are protected.
        assert "X~User~Id: " + EVIL in head
        assert not any(fold(n) == "x-user-id" and v == EVIL for n, v in recorder.last_fields())
        return
    if b"obs-fold" in b"".join(trick) or trick[0] == b"X-Other: a":
        # An obs-fold continuation belongs to the field above it: never a field of its own upstream.
        assert not any(fold(n.strip()) == "x-user-id" and v == EVIL for n, v in recorder.last_fields()), head
        return
    assert_no_forgery(recorder, answer, authenticated=auth)


async def test_underscore_headers_dropped_by_default(
    make_gateway: MakeGateway, tmp_path: Any, recorder: Recorder
) -> None:
    client = await _gateway(make_gateway, tmp_path, recorder)
    await send_raw(client, _request("/public/x", [b"X_Custom: 1", b"X.Other: 2", b"X-Plain: 3"]))
    names = [n for n, _ in recorder.last_fields()]
    assert "X-Plain" in names
    assert "X_Custom" not in names and "X.Other" not in names


async def test_underscore_headers_pass_keeps_only_those_colliding_with_nothing(
    make_gateway: MakeGateway, tmp_path: Any, recorder: Recorder, clock: FakeClock
) -> None:
    client = await _gateway(make_gateway, tmp_path, recorder, server={"host": "127.0.0.1", "port": 0,
                                                                       "underscore_headers": "pass"})  # fmt: skip
    fields = [b"X_Custom: 1", b"X.Other: 2", *(f"{n}: {EVIL}".encode() for n in SPELLINGS)]
    answer = await send_raw(client, _request("/api/x", fields, mint(now=clock.now)))
    names = [n for n, _ in recorder.last_fields()]
    assert "X_Custom" in names and "X.Other" in names
    assert_no_forgery(recorder, answer, authenticated=True)


async def test_trusted_proxy_may_send_the_forwarded_family_but_not_odd_spellings(
    make_gateway: MakeGateway, tmp_path: Any, recorder: Recorder
) -> None:
    server = {"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"], "underscore_headers": "pass"}
    client = await _gateway(make_gateway, tmp_path, recorder, server=server)
    fields = [b"X-Forwarded-Port: 8443", b"X-Forwarded-Prefix: /app", b"Forwarded: for=10.0.0.9",
              b"X-Real-IP: 10.0.0.9", b"X-Forwarded-For: 10.0.0.9", b"X-Forwarded-Proto: https", b"X-Forwarded-Host: app.example",
              b"X_Forwarded_Prefix: /evil", b"X_Real_IP: 6.6.6.6", b"X.Forwarded.Proto: gopher"]  # fmt: skip
    await send_raw(client, _request("/public/x", fields))
    got = recorder.last_fields()
    assert ("X-Forwarded-Port", "8443") in got
    assert ("X-Forwarded-Prefix", "/app") in got
    assert ("Forwarded", "for=10.0.0.9") in got
    assert ("X-Real-IP", "10.0.0.9") in got
    assert ("X-Forwarded-For", "10.0.0.9, 127.0.0.1") in got
    assert ("X-Forwarded-Proto", "https") in got
    assert ("X-Forwarded-Host", "app.example") in got
    assert not {"X_Forwarded_Prefix", "X_Real_IP", "X.Forwarded.Proto"} & {n for n, _ in got}


async def test_forwarded_host_is_the_public_origin_when_set(
    make_gateway: MakeGateway, tmp_path: Any, recorder: Recorder
) -> None:
    server = {"host": "127.0.0.1", "port": 0, "public_origin": "https://app.example.com:8443"}
    client = await _gateway(make_gateway, tmp_path, recorder, server=server)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"GET /public/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    await writer.drain()
    await reader.read()
    writer.close()
    got = dict(recorder.last_fields())
    assert got["X-Forwarded-Host"] == "app.example.com:8443"


async def test_non_ascii_identity_is_percent_encoded_utf8(
    make_gateway: MakeGateway, tmp_path: Any, recorder: Recorder, clock: FakeClock
) -> None:
    client = await _gateway(make_gateway, tmp_path, recorder)
    await send_raw(client, _request("/api/x", [], mint(now=clock.now, email="jörg@exämple.com")))
    got = dict(recorder.last_fields())
    assert got["X-User-Email"] == "j%C3%B6rg@ex%C3%A4mple.com"
    assert got["X-User-Id"] == "user-1"


def test_encode_identity_leaves_ascii_alone_and_escapes_percent_only_when_encoding() -> None:
    assert encode_identity("user@example.com") == "user@example.com"
    assert encode_identity("a%b@ö.de") == "a%25b@%C3%B6.de"
    assert encode_identity("line\nbreak") == "line%0Abreak"
