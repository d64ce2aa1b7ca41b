"""Route policies against a real gateway and the demo upstream: answers, logs, metrics, reload, and attacks.

The attacks: path tricks against `paths` globs, the shapes of oauth2-proxy's GHSA-7rh7-c77v-6434 (query
matched as path), GHSA-pxq7-h93f-9jrg (fragment/suffix widening) and GHSA-7x63-xv5r-3p2x (a forwarded
URI header believed), forwarding headers that try to satisfy `networks`, and role claims forged in
tokens signed with the wrong key. Whatever passes a policy must reach the upstream as a path the
upstream cannot read as the refused one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.app import reload_app
from tests.conftest import MakeConfig, MakeGateway
from tests.support import mint

Client = TestClient[Any, Any]

AUDITOR = {"roles": ["auditor"]}
ADMIN = {"roles": ["admin"]}


def _routes(upstream: str) -> list[dict[str, Any]]:
    return [
        {
            "prefix": "/api", "upstream": upstream, "auth": "required",
            "deny": [{"paths": ["/api/admin/**"], "roles": ["auditor"]}, {"methods": ["DELETE"], "roles": ["auditor"]}],
            "allow": [{"roles": ["admin"]}, {"roles": ["auditor"]}, {"claims": {"tier": "gold"}}, {"mfa": True, "roles": ["ops"]}],
        },
        {
            "prefix": "/opt", "upstream": upstream + "/api/echo", "auth": "optional", "strip_prefix": True,
            "allow": [{"paths": ["/opt/open/**", "/opt/files/**/public"]}, {"roles": ["admin"]}],
        },
        {"prefix": "/net", "upstream": upstream + "/api/echo", "auth": "optional", "strip_prefix": True,
         "allow": [{"networks": ["10.0.0.0/8"]}]},
    ]  # fmt: skip


def _token(**claims: Any) -> dict[str, str]:
    claims.setdefault("sub", str(uuid.uuid4()))
    return {"Authorization": f"Bearer {mint(**claims)}"}


@pytest.fixture
async def gw(make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str) -> Client:
    return await make_gateway(make_config(routes=_routes(upstream_url)))


async def _get(gw: Client, raw: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, Any]]:
    resp = await gw.request(method, URL(raw, encoded=True), headers=headers or {})
    return resp.status, await resp.json()


# -- answers -------------------------------------------------------------------------------------


async def test_policy_admin_passes_to_upstream(gw: Client) -> None:
    status, body = await _get(gw, "/api/admin/users", _token(**ADMIN))
    assert status == 200 and body["admin"] is True


async def test_policy_refusal_is_403_insufficient_scope_with_challenge(gw: Client) -> None:
    resp = await gw.get("/api/admin/users", headers=_token(**AUDITOR))
    assert resp.status == 403
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    body = await resp.json()
    assert body["error"] == "insufficient_scope"
    assert "routes[" not in body["error_description"]  # the rule is for the log, not the caller


async def test_policy_no_allow_rule_matches_is_403(gw: Client) -> None:
    resp = await gw.get("/api/whoami", headers=_token(roles=["viewer"]))
    assert (resp.status, (await resp.json())["error"]) == (403, "insufficient_scope")


async def test_policy_deny_on_method(gw: Client) -> None:
    assert (await gw.delete("/api/echo", headers=_token(**AUDITOR))).status == 403
    assert (await gw.delete("/api/echo", headers=_token(**ADMIN))).status == 200


async def test_policy_claims_criterion_reads_verified_token(gw: Client) -> None:
    assert (await gw.get("/api/whoami", headers=_token(tier="gold"))).status == 200
    assert (await gw.get("/api/whoami", headers=_token(tier="silver"))).status == 403


async def test_policy_mfa_missing_is_401_step_up_present_passes(gw: Client) -> None:
    resp = await gw.get("/api/whoami", headers=_token(roles=["ops"], amr=["pwd"]))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="insufficient_user_authentication"'
    assert (await resp.json())["error"] == "insufficient_user_authentication"
    assert (await gw.get("/api/whoami", headers=_token(roles=["ops"], amr=["pwd", "otp", "mfa"]))).status == 200


async def test_policy_anonymous_on_optional_route_needing_identity_is_401_missing_token(gw: Client) -> None:
    resp = await gw.get("/opt/secret")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert (await resp.json())["error"] == "missing_token"
    assert (await gw.get("/opt/open/x")).status == 200
    assert (await gw.get("/opt/secret", headers=_token(**ADMIN))).status == 200


async def test_policy_refusal_logged_with_rule_and_counted(gw: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.auth"):
        assert (await gw.get("/api/admin/keys", headers=_token(**AUDITOR))).status == 403
        assert (await gw.get("/api/x", headers=_token(roles=["viewer"]))).status == 403
        assert (await gw.get("/opt/secret")).status == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.auth"]
    assert any("reason=insufficient_scope rule=routes[0].deny[0] route=/api" in line for line in lines), lines
    assert any("rule=routes[0].allow route=/api" in line for line in lines), lines
    assert any("reason=missing_token rule=routes[1].allow route=/opt" in line for line in lines), lines
    text = await (await gw.get("/metrics")).text()
    assert 'gateway_policy_refusals_total{reason="insufficient_scope",route="/api",rule="routes[0].deny[0]"} 1.0' in text
    assert 'gateway_policy_refusals_total{reason="insufficient_scope",route="/api",rule="routes[0].allow"} 1.0' in text
    assert 'gateway_policy_refusals_total{reason="missing_token",route="/opt",rule="routes[1].allow"} 1.0' in text


async def test_policy_reload_replaces_rules(gw: Client, make_config: MakeConfig, upstream_url: str) -> None:
    assert (await gw.get("/api/whoami", headers=_token(roles=["viewer"]))).status == 403
    routes = _routes(upstream_url)
    routes[0]["allow"].append({"roles": ["viewer"]})
    assert reload_app(gw.server.app, make_config(routes=routes)) == []
    assert (await gw.get("/api/whoami", headers=_token(roles=["viewer"]))).status == 200
    del routes[0]["allow"], routes[0]["deny"]
    reload_app(gw.server.app, make_config(routes=routes))
    assert (await gw.get("/api/admin/keys", headers=_token(**AUDITOR))).status == 200


# -- forged role claims ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forged",
    [
        {"secret": "wrong-secret-wrong-secret-wrong-secret-0123"},
        {"secret": "wrong-secret-wrong-secret-wrong-secret-0123", "kid": None},
        {"algorithm": "none", "secret": ""},
    ],
)
async def test_policy_forged_admin_role_is_401(gw: Client, forged: dict[str, Any]) -> None:
    if forged.get("algorithm") == "none":
        import jwt

        token = jwt.encode({"iss": "gateway", "aud": "api", "sub": "x", "sid": "s", "jti": "j", "iat": 1, "exp": 2**40,
                            "roles": ["admin"]}, None, algorithm="none", headers={"typ": "at+jwt"})  # fmt: skip
    else:
        from tests.support import SECRET

        kid = forged.pop("kid", "keep")
        if kid == "keep":
            from gateway.config import TokenConfig
            from gateway.tokens.keyring import KeyRing

            forged["kid"] = KeyRing(TokenConfig(secret=SECRET)).current_kid  # the real kid, the wrong key
        token = mint(roles=["admin"], **forged)
    resp = await gw.get("/api/admin/users", headers={"Authorization": f"Bearer {token}"})
    assert (resp.status, (await resp.json())["error"]) == (401, "invalid_token")


# -- path tricks against deny globs (an auditor must never reach /api/admin/...) -------------------


@pytest.mark.parametrize(
    "raw",
    [
        "/api/admin/keys",
        "/api/admin",
        "/api/admin/",
        "/api/admin%2Fkeys",
        "/api/admin%2fkeys",
        "/api/%61dmin/keys",
        "/api/./admin/keys",
        "/api/x/../admin/keys",
        "/api/x/%2E%2E/admin/keys",
        "/api//admin//keys",
        "/api///admin/keys",
        "/api/admin\\keys",
        "/api/admin%5Ckeys",
        "/api/Admin/keys",
        "/api/ADMIN",
        "/api/admin/keys?x=/api/whoami",
        "/api/admin/keys/",
        "/api/admin/keys/.",
    ],
)
async def test_policy_path_trick_cannot_slip_past_deny(gw: Client, raw: str) -> None:
    status, body = await _get(gw, raw, _token(**AUDITOR))
    assert status == 403, (raw, body)
    assert body["error"] == "insufficient_scope"


@pytest.mark.parametrize("raw", ["/api/admin;x=1/keys", "/api/admin%3Bx/keys", "/api/admin%252Fkeys", "/api/admin%2500"])
async def test_policy_path_that_passes_reaches_upstream_as_another_path(gw: Client, raw: str) -> None:
    # These segments are not "admin", so the deny glob does not hold them; what matters is that the
    # upstream receives them encoded, as a path it cannot route to its admin handler.
    status, body = await _get(gw, raw, _token(**AUDITOR))
    assert status in (200, 404), body
    assert "admin" not in body or body.get("admin") is not True
    if status == 200:
        assert not body["path"].startswith("/api/admin/") and body["path"] != "/api/admin"


async def test_policy_broken_escape_or_nul_is_400_not_a_bypass(gw: Client) -> None:
    for raw in ("/api/admin%2/keys", "/api/admin%00/keys"):
        status, body = await _get(gw, raw, _token(**AUDITOR))
        assert (status, body["error"]) == (400, "invalid_request")


# -- GHSA-7rh7-c77v-6434 / GHSA-pxq7-h93f-9jrg / GHSA-7x63-xv5r-3p2x shapes on an allow-listed path --


@pytest.mark.parametrize(
    "raw",
    [
        "/opt/secret?/opt/open/x",
        "/opt/secret?x=/opt/open/",
        "/opt/secret%3F/opt/open/x",
        "/opt/secret%23/opt/open/x",
        "/opt/secret#/opt/open/x",
        "/opt/openx",
        "/opt/secret/opt/open/x",
    ],
)
async def test_policy_query_or_fragment_never_satisfies_paths(gw: Client, raw: str) -> None:
    status, body = await _get(gw, raw)
    assert (status, body["error"]) == (401, "missing_token"), raw


async def test_policy_fragment_in_path_reaches_upstream_encoded(gw: Client) -> None:
    # `**` may widen over a segment holding "#", but the upstream gets it as %23, never as a fragment
    # that would cut the path back to /files/secret.
    status, body = await _get(gw, "/opt/files/secret%23/x/public")
    assert status == 200
    assert body["path"] == "/api/echo/files/secret%23/x/public"


async def test_policy_raw_hash_in_request_line_is_not_a_fragment(gw: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /opt/secret#/opt/open/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        await writer.drain()
        head = (await asyncio.wait_for(reader.read(65536), 5)).split(b"\r\n", 1)[0]
    finally:
        writer.close()
    assert head.split()[1] in (b"400", b"401"), head


@pytest.mark.parametrize("header", ["X-Forwarded-Uri", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Path", "X-Original-URI"])
@pytest.mark.parametrize("trusted", [False, True])
async def test_policy_forwarded_uri_headers_never_change_the_path(
    make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str, header: str, trusted: bool
) -> None:
    server = {"trusted_proxies": ["127.0.0.0/8"]} if trusted else {}
    gw = await make_gateway(make_config(routes=_routes(upstream_url), server=server))
    status, body = await _get(gw, "/opt/secret", {header: "/opt/open/x"})
    assert (status, body["error"]) == (401, "missing_token")
    status, _ = await _get(gw, "/api/admin/keys", {**_token(**AUDITOR), header: "/api/whoami"})
    assert status == 403


# -- networks: only the real client address counts -----------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "10.1.2.3"},
        {"X-Forwarded-For": "10.1.2.3, 10.9.9.9"},
        {"X-Real-IP": "10.1.2.3"},
        {"Forwarded": "for=10.1.2.3"},
        {"X-Client-IP": "10.1.2.3"},
        {"True-Client-IP": "10.1.2.3"},
    ],
)
async def test_policy_untrusted_forwarding_headers_cannot_satisfy_networks(gw: Client, headers: dict[str, str]) -> None:
    status, body = await _get(gw, "/net/x", headers)
    assert status == 403, body


async def test_policy_trusted_proxy_real_client_decides_networks(make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str) -> None:
    gw = await make_gateway(make_config(routes=_routes(upstream_url), server={"trusted_proxies": ["127.0.0.0/8"]}))
    assert (await _get(gw, "/net/x", {"X-Forwarded-For": "10.1.2.3"}))[0] == 200
    # The real client is the last hop the trusted proxies did not add: 192.0.2.5, not the 10.x it claims.
    assert (await _get(gw, "/net/x", {"X-Forwarded-For": "10.1.2.3, 192.0.2.5"}))[0] == 403
    assert (await _get(gw, "/net/x", {"X-Forwarded-For": "192.0.2.5, 10.1.2.3"}))[0] == 200
    assert (await _get(gw, "/net/x"))[0] == 403  # the proxy itself (127.0.0.1) is not in 10/8
