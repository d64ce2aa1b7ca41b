"""The compatibility matrix: a real gateway process in front of real upstream servers (stdlib
wsgiref, Flask on gunicorn, Django on gunicorn, Starlette on uvicorn, Express on Node, PHP's
built-in server), each reporting what its framework's idiomatic API says.

For each: no spelling trick makes it see a forged identity or forwarded value, a real login shows
the real (non-ASCII) identity, 50 MB uploads and downloads stream through, WebSockets work where
the framework has them, and its 4xx/5xx reach the client unchanged. The README's results table
lists what these tests check. Each server and its gateway start once per upstream (module scope).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.security.test_header_spoofing import EVIL, SPELLINGS
from tests.support import SECRET, free_port, gateway_process
from tests.upstreams.servers import CASE_INSENSITIVE, UPSTREAMS, Upstream, running

EMAIL = "jörg.müller@exämple.com"
PASSWORD = "correct horse battery staple"
PATTERN = b"0123456789abcdef" * 4096
BIG = 50 * 1024 * 1024
# Forwarded values a client might try to plant, besides the SPELLINGS of the gateway's own headers.
FORGED_FORWARDING = [
    "X-Forwarded-Proto: https", "X_Forwarded_Proto: https", "X.Forwarded.Proto: https", "x-forwarded-proto: https",
    "X-Forwarded-Ssl: on", "X-Forwarded-Protocol: ssl", "X-Forwarded-Host: ATTACKER.example",
    "X_Forwarded_Host: ATTACKER.example", "X-Forwarded-Port: 6666", "X-Forwarded-Prefix: /ATTACKER",
    "X_Forwarded_Prefix: /ATTACKER", "X-Forwarded-For: 6.6.6.6", "X_Forwarded_For: 6.6.6.6",
    "Forwarded: for=6.6.6.6;proto=https;host=ATTACKER.example", "X-Real-IP: 6.6.6.6", "X_Real_Ip: 6.6.6.6",
]  # fmt: skip


@dataclass(frozen=True)
class Stack:
    upstream: Upstream
    upstream_url: str
    port: int
    token: str
    user_id: str
    session_id: str

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


MATRIX_ROUTES = (("/api", "required"), ("/public", "public"), ("/opt", "optional"))
# The shape of the case attack: an admin API behind a required route, everything else public.
CASE_ROUTES = (("/admin", "required"), ("/", "public"))


def _config(port: int, upstream: str, db: Path, routes_: tuple[tuple[str, str], ...] = MATRIX_ROUTES) -> str:
    routes = "".join(
        f'\n[[routes]]\nprefix = "{p}"\nupstream = "{upstream}"\nauth = "{a}"\ntimeout = "30s"\n' for p, a in routes_
    )
    return f"""
[server]
host = "127.0.0.1"
port = {port}

[store]
url = "sqlite:///{db}"

[tokens]
secret = "{SECRET}"
access_ttl = "15m"

[limits]
login = "1000/minute"
{routes}"""


@pytest.fixture(scope="module", params=UPSTREAMS, ids=[u.name for u in UPSTREAMS])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _stack(request.param, tmp_path_factory.mktemp(request.param.name), MATRIX_ROUTES) as s:
        yield s


@pytest.fixture(scope="module", params=CASE_INSENSITIVE, ids=[u.name for u in CASE_INSENSITIVE])
def case_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A case-insensitive server behind routes /admin (required) and / (public)."""
    with _stack(request.param, tmp_path_factory.mktemp(f"case-{request.param.name}"), CASE_ROUTES) as s:
        yield s


@contextmanager
def _stack(upstream: Upstream, tmp: Path, routes: tuple[tuple[str, str], ...]) -> Iterator[Stack]:
    with running(upstream) as upstream_url:
        port = free_port()
        cfg = tmp / "gateway.toml"
        cfg.write_text(_config(port, upstream_url, tmp / "gateway.db", routes))
        subprocess.run(
            [sys.executable, "-m", "gateway", "users", "add", EMAIL, "--password-stdin", "--config", str(cfg)],
            input=PASSWORD + "\n", text=True, check=True, capture_output=True,
        )  # fmt: skip
        with gateway_process(cfg, port):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/auth/login", json.dumps({"email": EMAIL, "password": PASSWORD}),
                         {"Content-Type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            body = json.loads(resp.read())
            conn.close()
            assert resp.status == 200, body
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            yield Stack(upstream, upstream_url, port, body["access_token"], claims["sub"], claims["sid"])


def raw_get(port: int, path: str, fields: list[str], token: str | None = None) -> tuple[int, bytes]:
    """A GET written byte for byte (aiohttp's and http.client's own clients would normalise names)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", *fields]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read()


def call(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         *, chunked: bool = False) -> tuple[http.client.HTTPResponse, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def bearer(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token}"}


def assert_forwarded_values_are_the_gateways(stack: Stack, seen: dict[str, Any]) -> None:
    assert seen["scheme"] == "http", seen
    assert seen.get("secure") in (False, None), seen
    assert seen["remote_addr"] == "127.0.0.1", seen
    assert seen["host"] in (stack.host, stack.upstream_url.removeprefix("http://")), seen
    assert seen["script_root"] in ("", None), seen


@pytest.mark.parametrize("path", ["/public/whoami", "/opt/whoami", "/api/whoami"])
def test_no_spelling_plants_an_identity_or_forwarded_value(stack: Stack, path: str) -> None:
    authenticated = path.startswith("/api")
    fields = [f"{name}: {EVIL}" for name in SPELLINGS] + FORGED_FORWARDING
    status, body = raw_get(stack.port, path, fields, stack.token if authenticated else None)
    assert status == 200, body
    assert EVIL.encode() not in body and b"6.6.6.6" not in body, body
    seen = json.loads(body)
    assert_forwarded_values_are_the_gateways(stack, seen)
    if authenticated:
        assert seen["user_id"] == stack.user_id
        assert seen["session_id"] == stack.session_id
    else:
        assert seen["user_id"] is None and seen["email"] is None


TRICKS = [
    pytest.param(["X-User-Id: ATTACKER", "x-user-id: ATTACKER"], id="duplicates"),
    pytest.param(["X_User_Id: ATTACKER", "X-User_Id: ATTACKER"], id="underscores"),
    pytest.param(["X.User.Id: ATTACKER"], id="dots"),
    pytest.param(["X-USER-ID: ATTACKER"], id="case"),
    pytest.param(["X-User-Id : ATTACKER"], id="space-before-colon"),
    pytest.param(["X-Other: a", " X-User-Id: ATTACKER"], id="obs-fold"),
    pytest.param(["Connection: X-User-Id, X_User_Id", "X_User_Id: ATTACKER"], id="connection-named"),
    pytest.param(["X-User-Id\x00: ATTACKER"], id="nul"),
]


@pytest.mark.parametrize("fields", TRICKS)
@pytest.mark.parametrize("path", ["/public/whoami", "/api/whoami"])
def test_framing_tricks(stack: Stack, path: str, fields: list[str]) -> None:
    authenticated = path.startswith("/api")
    status, body = raw_get(stack.port, path, fields, stack.token if authenticated else None)
    if status == 400:  # the gateway refused the request outright
        return
    assert status == 200, body
    seen = json.loads(body)
    assert seen["user_id"] == (stack.user_id if authenticated else None), seen
    if fields[0] != "X-Other: a":  # an obs-folded line is part of X-Other's value, never a field of its own
        assert EVIL.encode() not in body, body


def test_real_login_shows_the_real_non_ascii_identity(stack: Stack) -> None:
    resp, body = call(stack.port, "GET", "/api/whoami", headers=bearer(stack))
    assert resp.status == 200, body
    seen = json.loads(body)
    assert seen["user_id"] == stack.user_id
    assert seen["email"] == EMAIL
    assert seen["session_id"] == stack.session_id
    assert_forwarded_values_are_the_gateways(stack, seen)


def _pieces(total: int) -> Iterator[bytes]:
    piece = PATTERN * 16  # 1 MiB
    while total > 0:
        yield piece[: min(total, len(piece))]
        total -= min(total, len(piece))


def _digest(total: int) -> str:
    h = hashlib.sha256()
    for piece in _pieces(total):
        h.update(piece)
    return h.hexdigest()


BIG_SHA = _digest(BIG)


def test_upload_50mb_with_content_length(stack: Stack) -> None:
    headers = {**bearer(stack), "Content-Length": str(BIG), "Content-Type": "application/octet-stream"}
    resp, body = call(stack.port, "POST", "/api/upload", _pieces(BIG), headers)
    assert resp.status == 200, body
    assert json.loads(body) == {"length": BIG, "sha256": BIG_SHA}


def test_upload_50mb_chunked(stack: Stack) -> None:
    headers = {**bearer(stack), "Content-Type": "application/octet-stream"}
    resp, body = call(stack.port, "POST", "/api/upload", _pieces(BIG), headers, chunked=True)
    if not stack.upstream.reads_chunked:
        # Over server.buffer_request_body the body stays chunked, and this server cannot read that;
        # the small-body test below is what the buffering gives it.
        pytest.xfail(f"{stack.upstream.server} cannot read chunked request bodies")
    assert resp.status == 200, body
    assert json.loads(body) == {"length": BIG, "sha256": BIG_SHA}


def test_upload_chunked_under_the_buffer_limit_arrives_whole(stack: Stack) -> None:
    size = 512 * 1024
    headers = {**bearer(stack), "Content-Type": "application/octet-stream"}
    resp, body = call(stack.port, "POST", "/api/upload", _pieces(size), headers, chunked=True)
    assert resp.status == 200, body
    assert json.loads(body) == {"length": size, "sha256": _digest(size)}


def test_download_50mb_streams(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    conn.request("GET", f"/api/download?bytes={BIG}", headers=bearer(stack))
    resp = conn.getresponse()
    assert resp.status == 200
    h, total = hashlib.sha256(), 0
    while chunk := resp.read(1 << 20):
        h.update(chunk)
        total += len(chunk)
    conn.close()
    assert total == BIG
    assert h.hexdigest() == BIG_SHA


async def test_websocket(stack: Stack) -> None:
    if not stack.upstream.websocket:
        pytest.skip(f"{stack.upstream.framework} has no WebSocket support")
    async with aiohttp.ClientSession() as http_session:
        async with http_session.ws_connect(f"ws://{stack.host}/api/ws", headers=bearer(stack)) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "hello"
            await ws.send_bytes(b"\x00\xff" * 1000)
            assert (await ws.receive(timeout=10)).data == b"\x00\xff" * 1000
            await ws.send_str("whoami")
            seen = json.loads((await ws.receive(timeout=10)).data)
            assert seen == {"user_id": stack.user_id, "email": EMAIL}


@pytest.mark.parametrize("path", ["/api/status/400", "/api/status/404", "/api/status/418", "/api/status/500",
                                  "/api/status/503", "/api/crash", "/api/no-such-path"])  # fmt: skip
def test_errors_pass_through_unchanged(stack: Stack, path: str) -> None:
    via, via_body = call(stack.port, "GET", path, headers=bearer(stack))
    upstream_port = int(stack.upstream_url.rsplit(":", 1)[1])
    direct, direct_body = call(upstream_port, "GET", path)
    assert direct.status >= 400
    assert (via.status, via.reason) == (direct.status, direct.reason)
    assert via_body == direct_body
    assert via.getheader("Content-Type") == direct.getheader("Content-Type")
    assert via.getheader("X-Upstream") == direct.getheader("X-Upstream")


# --- case: routes compare with case, these servers without ------------------------------------------


def _upstream_port(stack: Stack) -> int:
    return int(stack.upstream_url.rsplit(":", 1)[1])


def _seen_by_upstream(stack: Stack) -> list[str]:
    resp, body = call(_upstream_port(stack), "GET", "/_seen")
    assert resp.status == 200, body
    seen: list[str] = json.loads(body)
    return seen


# (sent to the gateway, what the gateway would forward: the server is asked that directly)
CASE_TRICKS = [
    ("/ADMIN/whoami", "/ADMIN/whoami"), ("/Admin/whoami", "/Admin/whoami"), ("/aDmIn/whoami", "/aDmIn/whoami"),
    ("/%41DMIN/whoami", "/ADMIN/whoami"), ("/public/../ADMIN/whoami", "/ADMIN/whoami"),
]  # fmt: skip


@pytest.mark.parametrize(("target", "forwarded"), CASE_TRICKS)
def test_case_variant_of_the_admin_route_is_refused_before_the_upstream(
    case_stack: Stack, target: str, forwarded: str
) -> None:
    stack = case_stack
    # Asked directly, the server answers its admin handler for this spelling (it routes without case)...
    status, body = raw_get(_upstream_port(stack), forwarded, [])
    assert status == 200 and json.loads(body)["route"] == "admin", body
    before = _seen_by_upstream(stack)
    # ...so through the public "/" route it would be the admin API without a token: the gateway refuses it.
    for token in (None, stack.token):
        status, body = raw_get(stack.port, target, [], token)
        assert status == 400, body
        assert json.loads(body)["error"] == "ambiguous_path", body
    assert _seen_by_upstream(stack) == before


def test_case_exact_admin_route_needs_its_token_and_other_paths_stay_public(case_stack: Stack) -> None:
    stack = case_stack
    assert raw_get(stack.port, "/admin/whoami", [])[0] == 401
    status, body = raw_get(stack.port, "/admin/whoami", [], stack.token)
    assert status == 200, body
    seen = json.loads(body)
    assert (seen["route"], seen["user_id"]) == ("admin", stack.user_id)
    status, body = raw_get(stack.port, "/Other/whoami", [])
    assert status == 200 and json.loads(body)["user_id"] is None, body
