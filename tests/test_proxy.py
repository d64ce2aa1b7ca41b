"""Behaviour of the reverse proxy: routing, path normalization, header policy, bodies, WebSockets, failures.

Every test drives a real gateway on a real port in front of a real upstream (the demo app, or a tiny
raw-socket server where the demo cannot send what the test needs) and asserts what the upstream saw.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import MakeConfig, MakeGateway
from tests.support import FakeClock, mint

Client = TestClient[Any, Any]

PATTERN = (b"0123456789abcdef" * 4096)[: 64 * 1024]  # the demo upstream's stream pattern


@pytest.fixture
def token(clock: FakeClock) -> str:
    """A sound access token issued at the gateway's (frozen) now; `mint()` alone may be a second ahead of it."""
    return mint(now=clock.now)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def own_origin(client: Client) -> str:
    return f"http://127.0.0.1:{client.server.port}"


async def seen(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The demo upstream's description of the request it received; fails loudly on a non-200."""
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


def header_names(data: dict[str, Any]) -> set[str]:
    return {name.lower() for name in data["headers"]}


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _BytesSocket:
    """Just enough of a socket for http.client.HTTPResponse to parse bytes already read."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return self._file


async def raw_request(
    client: Client,
    target: str,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    *,
    method: str = "GET",
    body: bytes = b"",
) -> RawResponse:
    """Sends exactly `target` on the request line (aiohttp's client would normalise it) and parses the answer."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{client.server.port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in pairs]
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    resp = http.client.HTTPResponse(_BytesSocket(data))  # type: ignore[arg-type]
    resp.begin()
    return RawResponse(resp.status, resp.msg, resp.read())


RawUpstream = Callable[..., Awaitable[tuple[str, list[bytes]]]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    """start(response_bytes, hold=0) -> (url, request heads): a server answering every request with fixed bytes.

    The demo upstream cannot send hop-by-hop headers of our choosing; this one sends exactly what it is
    given, then keeps the connection open for `hold` seconds before closing it.
    """
    servers: list[asyncio.Server] = []

    async def start(response: bytes, hold: float = 0) -> tuple[str, list[bytes]]:
        received: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                received.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(response)
                await writer.drain()
                await asyncio.sleep(hold)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", received

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


# --- routing ---------------------------------------------------------------------------------------


async def test_routing_longest_prefix_wins(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(make_config(routes=[
        {"prefix": "/api", "upstream": upstream_url, "auth": "public"},
        {"prefix": "/api/special", "upstream": upstream_url + "/special-base", "auth": "public", "strip_prefix": True},
    ]))  # fmt: skip
    assert (await seen(await gw.get("/api/special/x")))["path"] == "/special-base/x"
    assert (await seen(await gw.get("/api/other")))["path"] == "/api/other"


async def test_routing_prefix_then_more_letters_is_not_that_route(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(make_config(routes=[
        {"prefix": "/api", "upstream": upstream_url, "auth": "public"},
        {"prefix": "/api/special", "upstream": upstream_url + "/special-base", "auth": "public", "strip_prefix": True},
    ]))  # fmt: skip
    assert (await seen(await gw.get("/api/specialx")))["path"] == "/api/specialx"


async def test_routing_partial_segment_is_404_not_found(gateway: Client, token: str) -> None:
    resp = await gateway.get("/apix", headers=bearer(token))
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_routing_no_match_is_404_json(gateway: Client) -> None:
    resp = await gateway.get("/nowhere/at/all")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == "not_found"
    assert body["error_description"]


async def test_routing_exact_prefix_and_trailing_slash_match(gateway: Client, token: str) -> None:
    assert (await seen(await gateway.get("/api", headers=bearer(token))))["path"] == "/api"
    assert (await seen(await gateway.get("/api/", headers=bearer(token))))["path"] == "/api/"


async def test_routing_configured_trailing_slash_is_ignored(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(make_config(routes=[{"prefix": "/v2/", "upstream": upstream_url, "auth": "public"}]))
    assert (await seen(await gw.get("/v2")))["path"] == "/v2"
    assert (await seen(await gw.get("/v2/x")))["path"] == "/v2/x"
    assert (await gw.get("/v2x")).status == 404


async def test_routing_root_prefix_catches_everything_else(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(make_config(routes=[
        {"prefix": "/", "upstream": upstream_url, "auth": "public"},
        {"prefix": "/api", "upstream": upstream_url, "auth": "required"},
    ]))  # fmt: skip
    assert (await seen(await gw.get("/anything/here")))["path"] == "/anything/here"
    assert (await gw.get("/api/x")).status == 401


async def test_routing_gateway_paths_win_over_root_route(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(make_config(routes=[{"prefix": "/", "upstream": upstream_url, "auth": "public"}]))
    resp = await gw.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


@dataclass
class Recorded:
    url: str
    paths: list[str]


@pytest.fixture
async def recorded_upstream(aiohttp_server: Any) -> Recorded:
    """The demo upstream (echoing unknown paths) with a list of every raw path it was sent."""
    from aiohttp import web

    from upstream_demo import create_app as create_upstream

    paths: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        paths.append(request.raw_path)
        return await handler(request)  # type: ignore[no-any-return]

    app = create_upstream(echo_unknown_paths=True)
    app.middlewares.append(record)
    server = await aiohttp_server(app)
    return Recorded(f"http://127.0.0.1:{server.port}", paths)


def _admin_and_root(make_config: MakeConfig, url: str, *, root: bool = True) -> Any:
    routes = [
        {"prefix": "/admin", "upstream": url, "auth": "required"},
        {"prefix": "/keys", "upstream": url, "auth": "required"},
    ]
    if root:
        routes.append({"prefix": "/", "upstream": url, "auth": "public"})
    return make_config(routes=routes)


CASE_TRICKS = [
    "/ADMIN/x", "/Admin/x", "/aDmIn", "/ADMIN", "/ADMIN/", "/admiN/users/1",
    "/%41DMIN/x", "/%41dmin/x", "/a%44min/x", "/ADMIN%2fx", "/public/../ADMIN/x", "//ADMIN//x",
    "/adm%C4%B1n/x",  # dotless i (upper() is "I")
    "/adm%C4%B0n/x",  # capital I with dot (Java and .NET lower-case it to "i")
    "/%E2%84%AAeys/1",  # Kelvin sign (lower-cases to "k")
    "/key%C5%BF/1",  # long s (upper-cases to "S")
]  # fmt: skip


@pytest.mark.parametrize("target", CASE_TRICKS)
async def test_routing_case_variant_of_a_protected_route_is_400_ambiguous_path(
    make_gateway: MakeGateway, make_config: MakeConfig, recorded_upstream: Recorded, token: str, target: str
) -> None:
    # Express, ASP.NET and IIS route /ADMIN/x to their /admin/x: through the public "/" route it
    # would reach the admin API without a token.
    gw = await make_gateway(_admin_and_root(make_config, recorded_upstream.url))
    for headers in ({}, bearer(token)):
        resp = await raw_request(gw, target, headers)
        assert resp.status == 400, (target, resp.status, resp.body)
        assert resp.headers["Content-Type"].startswith("application/json")
        body = resp.json()
        assert body["error"] == "ambiguous_path" and body["error_description"], body
    assert recorded_upstream.paths == []


async def test_routing_case_variant_no_route_matches_with_case_stays_404(
    make_gateway: MakeGateway, make_config: MakeConfig, recorded_upstream: Recorded
) -> None:
    gw = await make_gateway(_admin_and_root(make_config, recorded_upstream.url, root=False))
    for target in ("/ADMIN/x", "/Admin", "/%41DMIN/x", "/KEYS/1"):
        resp = await raw_request(gw, target)
        assert (resp.status, resp.json()["error"]) == (404, "not_found"), target
    assert recorded_upstream.paths == []


async def test_routing_case_exact_paths_still_route_as_before(
    make_gateway: MakeGateway, make_config: MakeConfig, recorded_upstream: Recorded, token: str
) -> None:
    gw = await make_gateway(_admin_and_root(make_config, recorded_upstream.url))
    assert (await gw.get("/admin/x")).status == 401
    assert (await seen(await gw.get("/admin/X/Y", headers=bearer(token))))["path"] == "/admin/X/Y"
    assert (await seen(await gw.get("/%61dmin/x", headers=bearer(token))))["path"] == "/admin/x"
    # Case elsewhere is no trick: with or without case these pick the same route.
    assert (await seen(await gw.get("/Other/Path")))["path"] == "/Other/Path"
    assert (await seen(await gw.get("/ADMINX/x")))["path"] == "/ADMINX/x"
    assert (await raw_request(gw, "/CAF%C3%89")).json()["path"] == "/CAF%C3%89"
    assert recorded_upstream.paths == ["/admin/X/Y", "/admin/x", "/Other/Path", "/ADMINX/x", "/CAF%C3%89"]


@pytest.mark.parametrize(
    "target",
    ["/AUTH/login", "/Auth/sessions", "/AUTH", "/auth/../AUTH/refresh-token", "/HEALTHZ", "/Readyz", "/METRICS",
     "/.WELL-KNOWN/jwks.json", "/%41uth/login"],
)  # fmt: skip
async def test_routing_case_variant_of_a_gateway_path_is_400_ambiguous_path(
    make_gateway: MakeGateway, make_config: MakeConfig, recorded_upstream: Recorded, target: str
) -> None:
    # The gateway's own paths win over every route; a case-insensitive upstream behind "/" must not
    # be reached at its own /auth/..., /metrics or /healthz by a spelling the gateway does not own.
    gw = await make_gateway(make_config(routes=[{"prefix": "/", "upstream": recorded_upstream.url, "auth": "public"}]))
    for method in ("GET", "POST"):
        resp = await raw_request(gw, target, method=method)
        assert (resp.status, resp.json()["error"]) == (400, "ambiguous_path"), (method, target, resp.body)
    assert recorded_upstream.paths == []
    assert (await gw.get("/healthz")).status == 200
    assert (await seen(await gw.get("/HEALTHZ/x")))["path"] == "/HEALTHZ/x"  # no gateway path, either way


async def test_strip_prefix_removes_prefix_before_base_path(gateway: Client) -> None:
    # /opt is routed to <upstream>/api/echo with strip_prefix.
    assert (await seen(await gateway.get("/opt/x/y?q=1")))["path"] == "/api/echo/x/y"


async def test_strip_prefix_without_base_path_gives_root(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, received = await raw_upstream(b"HTTP/1.1 204 No Content\r\n\r\n")
    gw = await make_gateway(
        make_config(routes=[{"prefix": "/svc", "upstream": url, "auth": "public", "strip_prefix": True}])
    )
    assert (await gw.get("/svc/a/b")).status == 204
    assert (await gw.get("/svc")).status == 204
    assert [r.split(b"\r\n")[0] for r in received] == [b"GET /a/b HTTP/1.1", b"GET / HTTP/1.1"]


@pytest.mark.parametrize(
    ("prefix", "target"), [("/a;b", "/a;b/x"), ("/caf\u00e9", "/caf%C3%A9/x"), ("/sp ace", "/sp%20ace/x")]
)
async def test_strip_prefix_with_encoded_characters_leaves_the_rest(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream, prefix: str, target: str
) -> None:
    url, received = await raw_upstream(b"HTTP/1.1 204 No Content\r\n\r\n")
    gw = await make_gateway(
        make_config(routes=[{"prefix": prefix, "upstream": url, "auth": "public", "strip_prefix": True}])
    )
    assert (await raw_request(gw, target)).status == 204
    assert received[0].split(b"\r\n")[0] == b"GET /x HTTP/1.1"


async def test_upstream_base_path_is_put_in_front(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(
        make_config(routes=[{"prefix": "/api", "upstream": upstream_url + "/base", "auth": "public"}])
    )
    data = await seen(await gw.get("/api/x?k=v"))
    assert data["path"] == "/base/api/x"
    assert data["query"] == "k=v"


# --- path normalization (raw bytes on the wire) ----------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/public/../api/x", "/public/%2e%2e/api/x", "/public/%2E%2E/api/x", "/public/..%2fapi/x", "//api/x",
     "/public/..\\api/x", "/public/.%2e/api/x", "/api/./x", "/api//x", "/../../api/x", "/api/y/../x"],
)  # fmt: skip
async def test_path_tricks_without_token_are_routed_as_api_401(gateway: Client, target: str) -> None:
    resp = await raw_request(gateway, target)
    assert resp.status == 401
    assert resp.json()["error"] == "missing_token"


@pytest.mark.parametrize(
    "target",
    [
        "/public/../api/x",
        "/public/%2e%2e/api/x",
        "/public/..%2fapi/x",
        "//api/x",
        "/public/..\\api/x",
        "/api/%2e/x",
        "/../../api/x",
    ],
)
async def test_path_tricks_with_token_reach_upstream_as_normalized_path(
    gateway: Client, target: str, token: str
) -> None:
    resp = await raw_request(gateway, target, bearer(token))
    assert resp.status == 200, resp.body
    assert resp.json()["path"] == "/api/x"


async def test_path_nul_escape_is_400(gateway: Client) -> None:
    resp = await raw_request(gateway, "/public/a%00b")
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_request"


@pytest.mark.parametrize("target", ["/public/%zz", "/public/a%2", "/public/a%"])
async def test_path_broken_escape_is_400_invalid_request(gateway: Client, target: str) -> None:
    resp = await raw_request(gateway, target)
    assert resp.status == 400
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["error"] == "invalid_request"


async def test_path_double_encoding_is_decoded_once_and_reencoded(gateway: Client, token: str) -> None:
    resp = await raw_request(gateway, "/public/%252e%252e/x", bearer(token))
    assert resp.status == 200
    assert resp.json()["path"] == "/public/%252e%252e/x"


async def test_path_non_ascii_is_reencoded_uppercase(gateway: Client, token: str) -> None:
    resp = await raw_request(gateway, "/public/caf%c3%a9", bearer(token))
    assert resp.status == 200
    assert resp.json()["path"] == "/public/caf%C3%A9"


async def test_path_encoded_slash_is_decoded_and_routed_on(gateway: Client) -> None:
    # /public%2fx is the path "/public/x" after one decode: it must be routed (and forwarded) as that.
    resp = await raw_request(gateway, "/public%2fx")
    assert resp.status == 200
    assert resp.json()["path"] == "/public/x"


async def test_path_reserved_characters_are_reencoded(gateway: Client) -> None:
    resp = await raw_request(gateway, "/public/a%3Fb%23c%3Bd%20e")
    assert resp.status == 200
    assert resp.json()["path"] == "/public/a%3Fb%23c%3Bd%20e"


async def test_path_query_passes_through_unchanged(gateway: Client) -> None:
    resp = await raw_request(gateway, "/public/../public/x?a=%2F..%2f&b=1+2&b=%zz&c")
    assert resp.status == 200
    data = resp.json()
    assert data["path"] == "/public/x"
    assert data["query"] == "a=%2F..%2f&b=1+2&b=%zz&c"


async def test_path_absolute_form_target_uses_only_the_path(gateway: Client) -> None:
    resp = await raw_request(gateway, "http://evil.example/public/../api/x")
    assert resp.status == 401


# --- request headers -------------------------------------------------------------------------------


async def test_request_hop_by_hop_headers_are_dropped(gateway: Client) -> None:
    data = await seen(await gateway.get("/public/x", headers={
        "Connection": "keep-alive, X-Hop-Custom",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "Trailer": "X-T",
        "X-Hop-Custom": "secret",
        "X-End-To-End": "kept",
    }))  # fmt: skip
    names = header_names(data)
    for name in (
        "connection",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
        "x-hop-custom",
    ):
        assert name not in names, name
    assert data["headers"]["X-End-To-End"] == "kept"


async def test_request_upgrade_header_on_plain_request_is_dropped(gateway: Client) -> None:
    resp = await raw_request(gateway, "/public/x", {"Upgrade": "h2c"})
    assert resp.status == 200
    assert "upgrade" not in {n.lower() for n in resp.json()["headers"]}


async def test_request_chunked_framing_is_replaced_by_the_gateways_own(gateway: Client) -> None:
    resp = await raw_request(
        gateway, "/public/echo", {"Transfer-Encoding": "chunked"}, method="POST", body=b"5\r\nhello\r\n0\r\n\r\n"
    )
    assert resp.status == 200
    data = resp.json()
    assert data["body_length"] == 5
    assert data["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    # Under server.buffer_request_body: buffered and framed by Content-Length (tests/test_request_buffering.py).
    assert data["headers"]["Content-Length"] == "5"
    assert "Transfer-Encoding" not in data["headers"]


SPOOFED = {"X-User-Id": "admin", "X-User-Email": "admin@example.com", "X-Session-Id": "s-admin"}


async def test_identity_headers_spoofed_on_required_route_are_replaced(gateway: Client, token: str) -> None:
    data = await seen(await gateway.get("/api/whoami", headers={**SPOOFED, **bearer(token)}))
    assert data["headers"]["X-User-Id"] == "user-1"
    assert data["headers"]["X-User-Email"] == "user@example.com"
    assert data["headers"]["X-Session-Id"] == "session-1"


@pytest.mark.parametrize("path", ["/opt/x", "/public/x"])
async def test_identity_headers_spoofed_without_token_are_removed(gateway: Client, path: str) -> None:
    data = await seen(await gateway.get(path, headers={**SPOOFED, "x-user-id": "root"}))
    assert not {"x-user-id", "x-user-email", "x-session-id"} & header_names(data)


async def test_identity_headers_on_public_route_with_token_are_not_sent(gateway: Client, token: str) -> None:
    data = await seen(await gateway.get("/public/x", headers={**SPOOFED, **bearer(token)}))
    assert not {"x-user-id", "x-user-email", "x-session-id"} & header_names(data)


async def test_identity_headers_spoofed_on_optional_with_token_are_replaced(gateway: Client, token: str) -> None:
    data = await seen(
        await gateway.get("/opt/x", headers={"X-User-Id": "admin", "X-Session-Id": "s-admin", **bearer(token)})
    )
    assert data["headers"]["X-User-Id"] == "user-1"
    assert data["headers"]["X-Session-Id"] == "session-1"
    assert data["headers"]["X-User-Email"] == "user@example.com"


async def test_identity_headers_named_in_connection_are_still_ours(gateway: Client, token: str) -> None:
    data = await seen(
        await gateway.get(
            "/api/whoami", headers={"Connection": "X-User-Id, X-Session-Id", "X-User-Id": "admin", **bearer(token)}
        )
    )
    assert data["headers"]["X-User-Id"] == "user-1"
    assert data["headers"]["X-Session-Id"] == "session-1"


async def test_identity_headers_named_in_connection_on_public_are_removed(gateway: Client) -> None:
    data = await seen(await gateway.get("/public/x", headers={"Connection": "X-User-Id", "X-User-Id": "admin"}))
    assert "x-user-id" not in header_names(data)


async def test_identity_headers_custom_names_are_stripped_and_set(
    make_gateway: MakeGateway, make_config: MakeConfig, token: str
) -> None:
    gw = await make_gateway(make_config(identity_headers={"user_id": "X-Remote-User"}))
    public = await seen(await gw.get("/public/x", headers={"X-Remote-User": "admin"}))
    assert "x-remote-user" not in header_names(public)
    api = await seen(await gw.get("/api/x", headers={"X-Remote-User": "admin", **bearer(token)}))
    assert api["headers"]["X-Remote-User"] == "user-1"


async def test_authorization_is_removed_by_default(gateway: Client, token: str) -> None:
    data = await seen(await gateway.get("/api/whoami", headers=bearer(token)))
    assert "authorization" not in header_names(data)
    public = await seen(await gateway.get("/public/x", headers={"Authorization": "Basic Zm9vOmJhcg=="}))
    assert "authorization" not in header_names(public)


async def test_authorization_is_forwarded_when_route_says_so(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str, token: str
) -> None:
    gw = await make_gateway(
        make_config(routes=[{"prefix": "/api", "upstream": upstream_url, "forward_authorization": True}])
    )
    data = await seen(await gw.get("/api/whoami", headers=bearer(token)))
    assert data["headers"]["Authorization"] == f"Bearer {token}"


async def test_cookies_gateway_ones_removed_others_pass(gateway: Client, token: str) -> None:
    header = f"theme=dark; access_token={token}; refresh_token=r123; lang=en-GB"
    data = await seen(await gateway.get("/api/whoami", headers={"Cookie": header}))
    assert data["headers"]["X-User-Id"] == "user-1"  # authenticated by the cookie
    assert data["headers"]["Cookie"] == "theme=dark; lang=en-GB"


async def test_cookies_only_gateway_ones_means_no_cookie_header(gateway: Client) -> None:
    data = await seen(await gateway.get("/public/x", headers={"Cookie": "access_token=a; refresh_token=b"}))
    assert "cookie" not in header_names(data)


async def test_forwarded_headers_untrusted_peer_values_replaced(gateway: Client) -> None:
    data = await seen(await gateway.get("/public/x", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
    }))  # fmt: skip
    h = data["headers"]
    assert h["X-Forwarded-For"] == "127.0.0.1"
    assert h["X-Forwarded-Proto"] == "http"
    assert h["X-Forwarded-Host"] == f"127.0.0.1:{gateway.server.port}"


async def test_forwarded_headers_set_when_client_sends_none(gateway: Client) -> None:
    h = (await seen(await gateway.get("/public/x")))["headers"]
    assert h["X-Forwarded-For"] == "127.0.0.1"
    assert h["X-Forwarded-Proto"] == "http"
    assert h["X-Forwarded-Host"] == f"127.0.0.1:{gateway.server.port}"


async def test_forwarded_headers_trusted_peer_appended_and_believed(
    make_gateway: MakeGateway, make_config: MakeConfig
) -> None:
    gw = await make_gateway(make_config(server={"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]}))
    h = (await seen(await gw.get("/public/x", headers={
        "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com",
    })))["headers"]  # fmt: skip
    assert h["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert h["X-Forwarded-Proto"] == "https"
    assert h["X-Forwarded-Host"] == "app.example.com"


async def test_request_id_valid_is_kept_and_echoed(gateway: Client) -> None:
    rid = "abc-123._:@/+=XYZ"
    resp = await gateway.get("/public/x", headers={"X-Request-Id": rid})
    assert resp.headers["X-Request-Id"] == rid
    assert (await seen(resp))["headers"]["X-Request-Id"] == rid


async def test_request_id_128_chars_is_kept(gateway: Client) -> None:
    rid = "a" * 128
    resp = await gateway.get("/public/x", headers={"X-Request-Id": rid})
    assert resp.headers["X-Request-Id"] == rid


@pytest.mark.parametrize("bad", ["a" * 129, "has space", "semi;colon", 'quote"d'])
async def test_request_id_invalid_is_replaced_and_echoed(gateway: Client, bad: str) -> None:
    resp = await gateway.get("/public/x", headers={"X-Request-Id": bad})
    data = await seen(resp)
    rid = resp.headers["X-Request-Id"]
    assert rid != bad
    assert 1 <= len(rid) <= 128
    assert data["headers"]["X-Request-Id"] == rid


async def test_request_id_generated_when_absent_and_same_both_ways(gateway: Client) -> None:
    resp = await gateway.get("/public/x")
    data = await seen(resp)
    assert resp.headers["X-Request-Id"]
    assert data["headers"]["X-Request-Id"] == resp.headers["X-Request-Id"]


async def test_request_id_echoed_on_streamed_response(gateway: Client, token: str) -> None:
    resp = await gateway.get(
        "/public/../api/stream?bytes=200000", headers={"X-Request-Id": "stream-1", **bearer(token)}
    )
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "stream-1"
    assert len(await resp.read()) == 200000


async def test_request_id_echoed_on_error_response(gateway: Client) -> None:
    resp = await gateway.get("/api/x", headers={"X-Request-Id": "err-1"})
    assert resp.status == 401
    assert resp.headers["X-Request-Id"] == "err-1"


async def test_host_is_upstreams_own_by_default(gateway: Client, upstream: TestServer) -> None:
    data = await seen(await gateway.get("/public/x", headers={"Host": "app.example.com"}))
    assert data["headers"]["Host"] == f"127.0.0.1:{upstream.port}"


async def test_host_is_clients_with_preserve_host(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(
        make_config(routes=[{"prefix": "/public", "upstream": upstream_url, "auth": "public", "preserve_host": True}])
    )
    data = await seen(await gw.get("/public/x", headers={"Host": "app.example.com"}))
    assert data["headers"]["Host"] == "app.example.com"


async def test_method_and_end_to_end_headers_pass(gateway: Client) -> None:
    data = await seen(
        await gateway.request("PATCH", "/public/x", headers={"Accept": "text/plain", "X-Custom": "1"}, data=b"x")
    )
    assert data["method"] == "PATCH"
    assert data["headers"]["Accept"] == "text/plain"
    assert data["headers"]["X-Custom"] == "1"


# --- response headers and bodies ---------------------------------------------------------------------


async def test_response_set_cookie_naming_gateway_cookie_is_dropped(gateway: Client, token: str) -> None:
    resp = await gateway.get("/api/set-cookie?name=access_token&value=evil", headers=bearer(token))
    assert resp.status == 200
    assert resp.headers.getall("Set-Cookie") == ["demo=1; Path=/"]


async def test_response_set_cookie_naming_refresh_cookie_is_dropped(gateway: Client, token: str) -> None:
    resp = await gateway.get("/api/set-cookie?name=refresh_token&value=evil", headers=bearer(token))
    assert resp.headers.getall("Set-Cookie") == ["demo=1; Path=/"]


async def test_response_set_cookie_other_names_pass(gateway: Client, token: str) -> None:
    resp = await gateway.get("/api/set-cookie?name=theme&value=dark", headers=bearer(token))
    assert resp.headers.getall("Set-Cookie") == ["theme=dark; Path=/", "demo=1; Path=/"]


async def test_response_redirect_location_passes_untouched(gateway: Client, token: str) -> None:
    resp = await gateway.get("/api/redirect", headers=bearer(token), allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/api/whoami"


async def test_response_gzip_body_and_encoding_pass_untouched(gateway: Client, token: str) -> None:
    resp = await gateway.get("/api/gzip", headers=bearer(token), auto_decompress=False)
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    raw = await resp.read()
    assert raw[:2] == b"\x1f\x8b"
    assert int(resp.headers["Content-Length"]) == len(raw)
    assert json.loads(gzip.decompress(raw)) == {"compressed": True, "message": "hello from gzip"}


async def test_response_large_stream_is_complete(gateway: Client, token: str) -> None:
    size = 5_000_000
    resp = await gateway.get(f"/api/stream?bytes={size}", headers=bearer(token))
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    digest = hashlib.sha256()
    length = 0
    async for chunk in resp.content.iter_chunked(256 * 1024):
        digest.update(chunk)
        length += len(chunk)
    expected = hashlib.sha256()
    for i in range(0, size, len(PATTERN)):
        expected.update(PATTERN[: min(len(PATTERN), size - i)])
    assert length == size
    assert digest.hexdigest() == expected.hexdigest()


async def test_response_head_keeps_headers_without_body(gateway: Client, token: str) -> None:
    resp = await gateway.head("/api/whoami", headers=bearer(token))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert int(resp.headers["Content-Length"]) > 0
    assert await resp.read() == b""


async def test_response_empty_without_content_type_gets_none_invented(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, _ = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Up: 1\r\n\r\n")
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public"}]))
    resp = await gw.get("/r")
    assert resp.status == 200
    assert resp.headers["X-Up"] == "1"
    assert "Content-Type" not in resp.headers
    assert await resp.read() == b""


async def test_response_204_passes_without_body(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, _ = await raw_upstream(b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n")
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public"}]))
    resp = await gw.get("/r")
    assert resp.status == 204
    assert resp.headers["X-Up"] == "1"
    assert await resp.read() == b""


async def test_request_connection_named_headers_without_spaces_are_dropped(gateway: Client) -> None:
    # "a,b" is a list of two names (RFC 9110 5.6.1): the separator is the comma, not whitespace.
    data = await seen(await gateway.get("/public/x", headers={
        "Connection": "keep-alive,X-Hop-One,X-Hop-Two", "X-Hop-One": "1", "X-Hop-Two": "2", "X-Kept": "k",
    }))  # fmt: skip
    names = header_names(data)
    assert "x-hop-one" not in names and "x-hop-two" not in names
    assert data["headers"]["X-Kept"] == "k"


async def test_response_connection_named_headers_without_spaces_are_dropped(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, _ = await raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive,X-Up-One,X-Up-Two\r\n"
        b"X-Up-One: 1\r\nX-Up-Two: 2\r\nX-Up-Kept: k\r\n\r\nok"
    )
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public"}]))
    resp = await gw.get("/r")
    assert resp.status == 200
    assert "X-Up-One" not in resp.headers and "X-Up-Two" not in resp.headers
    assert resp.headers["X-Up-Kept"] == "k"


async def test_response_hop_by_hop_headers_are_dropped(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    body = b'{"ok":true}'
    url, _ = await raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close, X-Up-Private\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm=x\r\n"
        b"Upgrade: h2c\r\nTrailer: X-T\r\nX-Up-Private: secret\r\nX-Up-Public: yes\r\n\r\n" + body
    )
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public"}]))
    resp = await gw.get("/r")
    assert resp.status == 200
    assert await resp.read() == body
    for name in ("Keep-Alive", "Proxy-Authenticate", "Upgrade", "Trailer", "X-Up-Private"):
        assert name not in resp.headers, name
    assert resp.headers.get("Connection", "keep-alive").lower() in ("keep-alive", "close")
    assert resp.headers["X-Up-Public"] == "yes"


async def test_response_chunked_upstream_is_reframed(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, _ = await raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public"}]))
    resp = await gw.get("/r")
    assert resp.status == 200
    assert await resp.read() == b"hello world"


async def test_response_status_and_reason_pass(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, _ = await raw_upstream(b"HTTP/1.1 418 Teapot Here\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\ntea")
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public"}]))
    resp = await gw.get("/r")
    assert resp.status == 418
    assert resp.reason == "Teapot Here"
    assert await resp.text() == "tea"


async def test_upstream_request_target_is_exact_bytes(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, received = await raw_upstream(b"HTTP/1.1 204 No Content\r\n\r\n")
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url + "/b%20ase", "auth": "public"}]))
    resp = await raw_request(gw, "/r/x/../caf%c3%a9;v=1/%252e?q=%2F&x")
    assert resp.status == 204
    assert received[0].split(b"\r\n")[0] == b"GET /b%20ase/r/caf%C3%A9%3Bv=1/%252e?q=%2F&x HTTP/1.1"


# --- request bodies ------------------------------------------------------------------------------------


async def test_request_body_multi_mb_streams_intact(gateway: Client, token: str) -> None:
    body = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    data = await seen(await gateway.post("/api/echo", data=io.BytesIO(body), headers=bearer(token)))
    assert data["body_length"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert data["headers"]["Content-Length"] == str(len(body))


async def test_request_body_chunked_upload_streams_intact(gateway: Client, token: str) -> None:
    chunk = b"chunk-of-upload-" * 4096
    count = 200

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    data = await seen(await gateway.post("/api/echo", data=gen(), headers=bearer(token)))
    assert data["body_length"] == len(chunk) * count
    assert data["body_sha256"] == hashlib.sha256(chunk * count).hexdigest()
    assert data["headers"]["Transfer-Encoding"] == "chunked"


async def test_request_body_empty_post_reaches_upstream(gateway: Client, token: str) -> None:
    data = await seen(await gateway.post("/api/echo", data=b"", headers=bearer(token)))
    assert data["method"] == "POST"
    assert data["body_length"] == 0


# --- upstream failures ---------------------------------------------------------------------------------


async def test_upstream_refused_is_502_bad_gateway(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(make_config(routes=[
        {"prefix": "/down", "upstream": "http://127.0.0.1:1", "auth": "public"},
        {"prefix": "/public", "upstream": upstream_url, "auth": "public"},
    ]))  # fmt: skip
    resp = await gw.get("/down/x")
    assert resp.status == 502
    assert (await resp.json())["error"] == "bad_gateway"
    assert (await seen(await gw.get("/public/x")))["path"] == "/public/x"


async def test_upstream_slow_is_504_within_timeout(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(
        make_config(routes=[{"prefix": "/api", "upstream": upstream_url, "auth": "public", "timeout": "1s"}])
    )
    started = time.monotonic()
    resp = await gw.get("/api/slow?seconds=3")
    elapsed = time.monotonic() - started
    assert resp.status == 504
    assert (await resp.json())["error"] == "upstream_timeout"
    assert elapsed < 2.5
    assert (await seen(await gw.get("/api/whoami")))["path"] == "/api/whoami"


async def test_upstream_fast_enough_within_timeout_passes(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str
) -> None:
    gw = await make_gateway(
        make_config(routes=[{"prefix": "/api", "upstream": upstream_url, "auth": "public", "timeout": "2s"}])
    )
    resp = await gw.get("/api/slow?seconds=0.2")
    assert resp.status == 200
    assert await resp.json() == {"slept": 0.2}


async def test_upstream_broken_answer_is_502(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, _ = await raw_upstream(b"this is not http\r\n\r\n")
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public"}]))
    resp = await gw.get("/r")
    assert resp.status == 502
    assert (await resp.json())["error"] == "bad_gateway"


async def test_upstream_body_cut_short_aborts_client_connection(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, _ = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 100000)
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public"}]))
    resp = await gw.get("/r")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), timeout=10)


async def test_upstream_stall_mid_body_cuts_client_within_timeout(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream
) -> None:
    url, _ = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 100000, hold=5)
    gw = await make_gateway(make_config(routes=[{"prefix": "/r", "upstream": url, "auth": "public", "timeout": "1s"}]))
    started = time.monotonic()
    resp = await gw.get("/r")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), timeout=10)
    assert time.monotonic() - started < 3


# --- WebSockets ------------------------------------------------------------------------------------------


async def test_websocket_text_and_binary_echo_with_token(gateway: Client, token: str) -> None:
    async with gateway.session.ws_connect(gateway.make_url("/api/ws"), headers=bearer(token)) as ws:
        await ws.send_str("hello")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "hello")
        await ws.send_bytes(b"\x00\x01\xff")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00\x01\xff")


async def test_websocket_without_token_is_401_before_upgrade(gateway: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await gateway.session.ws_connect(gateway.make_url("/api/ws"))
    assert info.value.status == 401


async def test_websocket_upstream_close_code_passes_through(gateway: Client, token: str) -> None:
    async with gateway.session.ws_connect(gateway.make_url("/api/ws"), headers=bearer(token)) as ws:
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 4001


async def test_websocket_cookie_auth_without_origin_is_403(gateway: Client, token: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await gateway.session.ws_connect(gateway.make_url("/api/ws"), headers={"Cookie": f"access_token={token}"})
    assert info.value.status == 403


async def test_websocket_cookie_auth_with_own_origin_connects(gateway: Client, token: str) -> None:
    async with gateway.session.ws_connect(
        gateway.make_url("/api/ws"), headers={"Cookie": f"access_token={token}"}, origin=own_origin(gateway)
    ) as ws:
        await ws.send_str("hi")
        msg = await ws.receive(timeout=5)
        assert msg.data == "hi"


async def test_websocket_handshake_upstream_gets_identity_not_spoofs(
    make_gateway: MakeGateway, make_config: MakeConfig, raw_upstream: RawUpstream, token: str
) -> None:
    url, received = await raw_upstream(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    gw = await make_gateway(make_config(routes=[{"prefix": "/api", "upstream": url, "auth": "required"}]))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await gw.session.ws_connect(
            gw.make_url("/api/ws"), headers={"X-User-Id": "admin", "Cookie": "access_token=x; a=1", **bearer(token)}
        )
    assert info.value.status == 502
    head = received[0].decode().lower()
    assert "x-user-id: user-1\r\n" in head
    assert "admin" not in head
    assert "authorization" not in head
    assert "cookie: a=1\r\n" in head
    assert "upgrade: websocket" in head


async def test_websocket_upstream_down_is_502(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    gw = await make_gateway(
        make_config(routes=[{"prefix": "/api", "upstream": "http://127.0.0.1:1", "auth": "public"}])
    )
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await gw.session.ws_connect(gw.make_url("/api/ws"))
    assert info.value.status == 502


# --- Origin checks for cookie-authenticated unsafe requests ------------------------------------------


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"access_token={token}"}


async def test_origin_cookie_post_without_origin_is_403_csrf_failed(gateway: Client, token: str) -> None:
    resp = await gateway.post("/api/echo", data=b"x", headers=cookie(token))
    assert resp.status == 403
    assert (await resp.json())["error"] == "csrf_failed"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_origin_cookie_other_unsafe_methods_without_origin_are_403(
    gateway: Client, method: str, token: str
) -> None:
    resp = await gateway.request(method, "/api/echo", headers=cookie(token))
    assert resp.status == 403


async def test_origin_cookie_post_with_own_origin_passes(gateway: Client, token: str) -> None:
    data = await seen(
        await gateway.post("/api/echo", data=b"x", headers={**cookie(token), "Origin": own_origin(gateway)})
    )
    assert data["headers"]["X-User-Id"] == "user-1"
    assert data["body_length"] == 1


async def test_origin_cookie_post_with_own_referer_passes(gateway: Client, token: str) -> None:
    resp = await gateway.post(
        "/api/echo", data=b"x", headers={**cookie(token), "Referer": own_origin(gateway) + "/page?x=1"}
    )
    assert resp.status == 200


async def test_origin_cookie_post_with_public_origin_passes(
    make_gateway: MakeGateway, make_config: MakeConfig, token: str
) -> None:
    gw = await make_gateway(
        make_config(server={"host": "127.0.0.1", "port": 0, "public_origin": "https://app.example.com"})
    )
    assert (await gw.post("/api/echo", headers={**cookie(token), "Origin": "https://app.example.com"})).status == 200
    assert (await gw.post("/api/echo", headers={**cookie(token), "Origin": own_origin(gw)})).status == 403


async def test_origin_null_is_403(gateway: Client, token: str) -> None:
    resp = await gateway.post("/api/echo", headers={**cookie(token), "Origin": "null"})
    assert resp.status == 403
    assert (await resp.json())["error"] == "csrf_failed"


async def test_origin_foreign_is_403(gateway: Client, token: str) -> None:
    resp = await gateway.post("/api/echo", headers={**cookie(token), "Origin": "http://evil.example"})
    assert resp.status == 403


async def test_origin_foreign_with_own_referer_is_403(gateway: Client, token: str) -> None:
    # Origin wins over Referer: a foreign Origin is not rescued by a matching Referer.
    resp = await gateway.post(
        "/api/echo", headers={**cookie(token), "Origin": "http://evil.example", "Referer": own_origin(gateway) + "/"}
    )
    assert resp.status == 403


async def test_origin_bearer_post_without_origin_passes(gateway: Client, token: str) -> None:
    data = await seen(await gateway.post("/api/echo", data=b"abc", headers=bearer(token)))
    assert data["body_length"] == 3


async def test_origin_cookie_get_without_origin_passes(gateway: Client, token: str) -> None:
    assert (await gateway.get("/api/whoami", headers=cookie(token))).status == 200


async def test_origin_trusted_origin_passes(make_gateway: MakeGateway, make_config: MakeConfig, token: str) -> None:
    gw = await make_gateway(make_config(csrf={"trusted_origins": ["https://admin.example.com"]}))
    assert (await gw.post("/api/echo", headers={**cookie(token), "Origin": "https://admin.example.com"})).status == 200


@pytest.mark.parametrize("suffix", [".evil.example", "0", "@evil.example", "evil"])
async def test_origin_lookalike_extending_own_origin_is_403(gateway: Client, token: str, suffix: str) -> None:
    # Origins are compared whole: the gateway's own origin as a mere prefix proves nothing.
    for header in ("Origin", "Referer"):
        value = own_origin(gateway) + suffix + ("/page" if header == "Referer" else "")
        resp = await gateway.post("/api/echo", headers={**cookie(token), header: value})
        assert resp.status == 403, (header, value)
        assert (await resp.json())["error"] == "csrf_failed"


@pytest.mark.parametrize("origin", ["https://admin.example.com.evil.net", "https://admin.example.comx", "https://admin.example.co"])
async def test_origin_lookalike_of_trusted_origin_is_403(
    make_gateway: MakeGateway, make_config: MakeConfig, token: str, origin: str
) -> None:
    gw = await make_gateway(make_config(csrf={"trusted_origins": ["https://admin.example.com"]}))
    resp = await gw.post("/api/echo", headers={**cookie(token), "Origin": origin})
    assert resp.status == 403
    assert (await resp.json())["error"] == "csrf_failed"


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8"]], ids=["no-trusted-proxies", "peer-not-trusted"])
async def test_origin_forged_forwarded_host_from_untrusted_peer_is_403(
    make_gateway: MakeGateway, make_config: MakeConfig, token: str, trusted: list[str]
) -> None:
    # An attacker's page cannot make its own origin "ours" by forging the forwarded headers.
    gw = await make_gateway(make_config(server={"host": "127.0.0.1", "port": 0, "trusted_proxies": trusted}))
    for origin, forged in (
        ("http://evil.example", {"X-Forwarded-Host": "evil.example"}),
        ("http://evil.example", {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}),
        ("https://evil.example", {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}),
        ("https://127.0.0.1:" + str(gw.server.port), {"X-Forwarded-Proto": "https"}),
    ):
        resp = await gw.post("/api/echo", headers={**cookie(token), "Origin": origin, **forged})
        assert resp.status == 403, (origin, forged)
        assert (await resp.json())["error"] == "csrf_failed"
    assert (await gw.post("/api/echo", headers={**cookie(token), "Origin": own_origin(gw)})).status == 200


async def test_origin_forwarded_host_from_trusted_proxy_is_believed(
    make_gateway: MakeGateway, make_config: MakeConfig, token: str
) -> None:
    gw = await make_gateway(make_config(server={"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]}))
    behind = {"X-Forwarded-Host": "app.example.com", "X-Forwarded-Proto": "https"}
    passed = await gw.post("/api/echo", headers={**cookie(token), "Origin": "https://app.example.com", **behind})
    assert passed.status == 200
    refused = await gw.post("/api/echo", headers={**cookie(token), "Origin": own_origin(gw), **behind})
    assert refused.status == 403


async def test_origin_cookie_post_on_optional_route_is_checked(gateway: Client, token: str) -> None:
    assert (await gateway.post("/opt/x", headers=cookie(token))).status == 403
    assert (await gateway.post("/opt/x")).status == 200


# --- token extraction on proxied routes ------------------------------------------------------------------


async def test_auth_two_authorization_headers_is_400(gateway: Client, token: str) -> None:
    resp = await raw_request(
        gateway, "/api/whoami", [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    )
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_request"


async def test_auth_bad_bearer_with_good_cookie_is_401(gateway: Client, token: str) -> None:
    resp = await gateway.get("/api/whoami", headers={"Authorization": "Bearer not-a-jwt", **cookie(token)})
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_token"
    assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


async def test_auth_basic_authorization_is_ignored_and_cookie_used(gateway: Client, token: str) -> None:
    data = await seen(
        await gateway.get("/api/whoami", headers={"Authorization": "Basic Zm9vOmJhcg==", **cookie(token)})
    )
    assert data["headers"]["X-User-Id"] == "user-1"
    assert "authorization" not in header_names(data)


async def test_auth_optional_route_bad_token_is_401(gateway: Client) -> None:
    resp = await gateway.get("/opt/x", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401


async def test_auth_expired_token_is_401_invalid_token(gateway: Client, clock: FakeClock) -> None:
    resp = await gateway.get("/api/whoami", headers=bearer(mint(now=clock.now - 3600)))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


async def test_auth_token_in_query_is_not_accepted(gateway: Client, token: str) -> None:
    resp = await gateway.get(f"/api/whoami?access_token={token}")
    assert resp.status == 401
    assert (await resp.json())["error"] == "missing_token"
