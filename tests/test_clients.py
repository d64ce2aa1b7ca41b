"""Machine clients end to end: `POST /auth/token` per RFC 6749 4.4/5.2, RFC 9068 tokens, upstream headers,
policies that admit or refuse clients, throttling, removal within 1 s, and the `gateway clients` command.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import jwt
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from gateway.clients.keys import CLIENTS
from gateway.clients.service import hash_client_secret
from gateway.http.keys import CONFIG
from gateway.store import ClientRecord, open_store
from tests.conftest import MakeConfig, MakeGateway
from tests.support import SECRET, write_toml

Client = TestClient[Any, Any]
FORM = "application/x-www-form-urlencoded"


def _basic(client_id: str, secret: str, *, encode: bool = True) -> dict[str, str]:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}" if encode else f"{client_id}:{secret}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


async def _token(gw: Client, body: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    resp = await gw.post("/auth/token", data=body, headers={"Content-Type": FORM, **(headers or {})})
    return resp.status, await resp.json(), resp.headers


def _routes(upstream: str) -> list[dict[str, Any]]:
    return [
        {"prefix": "/api", "upstream": upstream, "auth": "required"},
        {"prefix": "/users-only", "upstream": upstream + "/api/echo", "auth": "required", "strip_prefix": True,
         "allow": [{"roles": ["admin"]}, {"email_domains": ["example.com"]}]},
        {"prefix": "/billing", "upstream": upstream + "/api/echo", "auth": "required", "strip_prefix": True,
         "allow": [{"scopes": ["billing.write"]}, {"roles": ["admin"]}]},
    ]  # fmt: skip


@pytest.fixture
async def gw(make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str) -> Client:
    return await make_gateway(make_config(routes=_routes(upstream_url), limits={"login": "5/minute"}))


@pytest.fixture
async def billing(gw: Client) -> tuple[str, str]:
    record, secret = await gw.server.app[CLIENTS].add("billing service", ["billing.read", "billing.write"])
    return record.id, secret


async def test_token_basic_auth_answers_rfc6749_body(gw: Client, billing: tuple[str, str]) -> None:
    status, body, headers = await _token(gw, "grant_type=client_credentials", _basic(*billing))
    assert status == 200, body
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 300, "billing.read billing.write")
    assert headers["Cache-Control"] == "no-store" and "refresh_token" not in body
    claims = jwt.decode(body["access_token"], SECRET, algorithms=["HS256"], audience="api")
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    assert claims["sub"] == claims["client_id"] == billing[0]
    assert claims["scope"] == "billing.read billing.write"
    assert not {"email", "sid", "roles"} & set(claims)


async def test_token_form_credentials_work(gw: Client, billing: tuple[str, str]) -> None:
    cid, secret = billing
    status, body, _ = await _token(gw, f"grant_type=client_credentials&client_id={cid}&client_secret={secret}")
    assert status == 200, body


async def test_token_basic_credentials_are_form_decoded(gw: Client) -> None:
    # RFC 6749 2.3.1: id and secret are form-urlencoded before Basic; a "+" sent raw means a space.
    secret = "a+b c%:d/é"
    store = await open_store(gw.server.app[CONFIG].store)
    try:
        await store.create_client(ClientRecord(id="cl:odd id", name="odd", secret_hash=hash_client_secret(secret), scopes=("x",), created_at=time.time()))
    finally:
        await store.aclose()
    assert (await _token(gw, "grant_type=client_credentials", _basic("cl:odd id", secret)))[0] == 200
    status, body, headers = await _token(gw, "grant_type=client_credentials", _basic("cl:odd id", secret, encode=False))
    assert (status, body["error"]) == (401, "invalid_client")


@pytest.mark.parametrize("kind", ["wrong secret", "unknown id", "no auth", "bearer instead", "garbage basic", "empty secret"])
async def test_token_bad_client_auth_is_401_invalid_client_with_basic_challenge(gw: Client, billing: tuple[str, str], kind: str) -> None:
    cid, secret = billing
    headers = {
        "wrong secret": _basic(cid, secret[:-1] + ("A" if secret[-1] != "A" else "B")),
        "unknown id": _basic("cl_nobody", secret),
        "no auth": {},
        "bearer instead": {"Authorization": "Bearer x"},
        "garbage basic": {"Authorization": "Basic !!!notbase64"},
        "empty secret": _basic(cid, ""),
    }[kind]
    status, body, resp_headers = await _token(gw, "grant_type=client_credentials", headers)
    assert (status, body["error"]) == (401, "invalid_client")
    assert resp_headers["WWW-Authenticate"] == 'Basic realm="gateway"'


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("", "invalid_request"),
        ("grant_type=password&username=a&password=b", "unsupported_grant_type"),
        ("grant_type=refresh_token&refresh_token=x", "unsupported_grant_type"),
        ("grant_type=client_credentials&grant_type=client_credentials", "invalid_request"),
        ("grant_type=client_credentials&scope=a&scope=b", "invalid_request"),
    ],
)
async def test_token_bad_request_answers_rfc6749_errors(gw: Client, billing: tuple[str, str], body: str, error: str) -> None:
    status, answer, _ = await _token(gw, body, _basic(*billing))
    assert (status, answer["error"]) == (400, error)


async def test_token_json_body_or_both_auth_methods_is_invalid_request(gw: Client, billing: tuple[str, str]) -> None:
    cid, secret = billing
    resp = await gw.post("/auth/token", json={"grant_type": "client_credentials"}, headers=_basic(cid, secret))
    assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")
    status, body, _ = await _token(gw, f"grant_type=client_credentials&client_id={cid}&client_secret={secret}", _basic(cid, secret))
    assert (status, body["error"]) == (400, "invalid_request")


async def test_token_secret_in_url_is_refused(gw: Client, billing: tuple[str, str]) -> None:
    cid, secret = billing
    resp = await gw.post(f"/auth/token?client_id={cid}&client_secret={secret}", data="grant_type=client_credentials", headers={"Content-Type": FORM})
    assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")


async def test_token_get_is_405(gw: Client) -> None:
    assert (await gw.get("/auth/token")).status == 405


# -- scopes: no escalation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    ["admin", "billing.read admin", "billing.read%20billing.admin", "billing.*", "BILLING.READ", "billing.read,admin"],
)
async def test_token_scope_escalation_is_invalid_scope(gw: Client, billing: tuple[str, str], scope: str) -> None:
    status, body, _ = await _token(gw, f"grant_type=client_credentials&scope={scope}", _basic(*billing))
    assert (status, body["error"]) == (400, "invalid_scope"), body


async def test_token_scope_subset_and_omitted(gw: Client, billing: tuple[str, str]) -> None:
    status, body, _ = await _token(gw, "grant_type=client_credentials&scope=billing.read", _basic(*billing))
    assert (status, body["scope"]) == (200, "billing.read")
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["scope"] == "billing.read"
    status, body, _ = await _token(gw, "grant_type=client_credentials&scope=", _basic(*billing))
    assert (status, body["scope"]) == (200, "billing.read billing.write")


async def test_token_extra_parameters_never_reach_the_token(gw: Client, billing: tuple[str, str]) -> None:
    status, body, _ = await _token(gw, "grant_type=client_credentials&roles=admin&sub=someone&email=a@example.com", _basic(*billing))
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert status == 200 and claims["sub"] == billing[0] and "roles" not in claims and "email" not in claims


# -- throttling ------------------------------------------------------------------------------------


async def test_token_failures_throttled_like_logins(gw: Client, billing: tuple[str, str]) -> None:
    cid, secret = billing
    for _ in range(5):
        assert (await _token(gw, "grant_type=client_credentials", _basic(cid, "wrong")))[0] == 401
    status, body, headers = await _token(gw, "grant_type=client_credentials", _basic(cid, secret))
    assert (status, body["error"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1


async def test_token_failure_throttle_follows_limits_login_on_reload(
    gw: Client, billing: tuple[str, str], make_config: MakeConfig, upstream_url: str
) -> None:
    """SIGHUP re-reads `limits.login` for client authentications too, as it does for logins."""
    from gateway.app import reload_app

    cid, secret = billing
    assert reload_app(gw.server.app, make_config(routes=_routes(upstream_url), limits={"login": "2/minute"})) == []
    for _ in range(2):
        assert (await _token(gw, "grant_type=client_credentials", _basic(cid, "wrong")))[0] == 401
    status, body, _ = await _token(gw, "grant_type=client_credentials", _basic(cid, secret))
    assert (status, body["error"]) == (429, "rate_limited")


async def test_token_successes_do_not_count_toward_throttle(gw: Client, billing: tuple[str, str]) -> None:
    for _ in range(8):
        assert (await _token(gw, "grant_type=client_credentials", _basic(*billing)))[0] == 200


# -- client tokens at the routes -----------------------------------------------------------------------


async def _client_token(gw: Client, creds: tuple[str, str], scope: str = "") -> str:
    status, body, _ = await _token(gw, "grant_type=client_credentials" + (f"&scope={scope}" if scope else ""), _basic(*creds))
    assert status == 200
    return str(body["access_token"])


async def test_client_token_upstream_gets_client_headers_not_user_headers(gw: Client, billing: tuple[str, str]) -> None:
    token = await _client_token(gw, billing)
    spoof = {"X-User-Id": "u-1", "X-User-Email": "boss@example.com", "X-User-Roles": "admin", "X-Session-Id": "s"}
    seen = await (await gw.get("/api/whoami", headers={"Authorization": f"Bearer {token}", **spoof})).json()
    low = {k.lower(): v for k, v in seen["headers"].items()}
    assert low["x-client-id"] == billing[0]
    assert low["x-token-scopes"] == "billing.read billing.write"
    assert not {"x-user-id", "x-user-email", "x-user-roles", "x-session-id"} & set(low)


async def test_client_headers_spoofed_by_a_user_are_stripped(gw: Client) -> None:
    from tests.support import mint

    seen = await (await gw.get("/api/whoami", headers={"Authorization": f"Bearer {mint()}", "X-Client-Id": "cl_x", "x-token-scopes": "all"})).json()
    assert not {"x-client-id", "x-token-scopes"} & {k.lower() for k in seen["headers"]}


async def test_client_token_on_user_only_route_is_403(gw: Client, billing: tuple[str, str]) -> None:
    resp = await gw.get("/users-only/x", headers={"Authorization": f"Bearer {await _client_token(gw, billing)}"})
    assert (resp.status, (await resp.json())["error"]) == (403, "insufficient_scope")


async def test_client_token_scope_criterion_admits_only_with_the_scope(gw: Client, billing: tuple[str, str]) -> None:
    full = await _client_token(gw, billing)
    narrow = await _client_token(gw, billing, "billing.read")
    assert (await gw.post("/billing/invoices", headers={"Authorization": f"Bearer {full}"})).status == 200
    assert (await gw.post("/billing/invoices", headers={"Authorization": f"Bearer {narrow}"})).status == 403


async def test_client_removed_elsewhere_tokens_refused_within_1s(gw: Client, billing: tuple[str, str]) -> None:
    token = await _client_token(gw, billing)
    assert (await gw.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})).status == 200
    other = await open_store(gw.server.app[CONFIG].store)  # another instance's store, as `gateway clients remove` uses
    try:
        from gateway.authz.grants import REMOVED

        assert await other.remove_client(billing[0], now=time.time(), version=REMOVED)
    finally:
        await other.aclose()
    start = time.monotonic()
    while (await gw.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})).status != 401:
        assert time.monotonic() - start < 1.0, "the removed client's token was still accepted after 1 s"
        await asyncio.sleep(0.02)
    status, body, _ = await _token(gw, "grant_type=client_credentials", _basic(*billing))
    assert (status, body["error"]) == (401, "invalid_client")


async def test_client_removed_elsewhere_its_open_websocket_is_closed(gw: Client, billing: tuple[str, str]) -> None:
    token = await _client_token(gw, billing)
    async with gw.ws_connect("/api/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send_str("ping")
        echoed = await asyncio.wait_for(ws.receive(), 2)
        assert echoed.type == WSMsgType.TEXT and "ping" in echoed.data
        other = await open_store(gw.server.app[CONFIG].store)
        try:
            from gateway.authz.grants import REMOVED

            assert await other.remove_client(billing[0], now=time.time(), version=REMOVED)
        finally:
            await other.aclose()
        msg = await asyncio.wait_for(ws.receive(), 1.0)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
        assert (ws.close_code, msg.extra) == (1008, "access changed")


# -- the command ---------------------------------------------------------------------------------------


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)], text=True, capture_output=True, timeout=60)


def test_cli_clients_add_list_remove(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    cfg = write_toml(tmp_path / "g.toml", f'[store]\nurl = "sqlite:///{db}"\n[tokens]\nsecret = "{SECRET}"\n[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:1"\n')
    added = _cli(cfg, "clients", "add", "billing", "--scope", "billing.write", "--scope", "billing.read")
    assert added.returncode == 0, added.stderr
    lines = added.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["client_id", "client_secret"]
    cid, secret = (line.split(": ", 1)[1] for line in lines)
    assert len(secret) >= 43 and cid.startswith("cl_")
    listed = _cli(cfg, "clients", "list")
    assert listed.returncode == 0 and listed.stdout.split("\t")[:3] == [cid, "billing", "billing.read billing.write"]
    assert secret not in listed.stdout
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump and hash_client_secret(secret) in dump
    bad = _cli(cfg, "clients", "add", "x", "--scope", 'a"b')
    assert bad.returncode == 1 and "is not a scope" in bad.stderr and "Traceback" not in bad.stderr
    removed = _cli(cfg, "clients", "remove", cid)
    assert (removed.returncode, removed.stdout) == (0, f"removed client {cid}\n")
    again = _cli(cfg, "clients", "remove", cid)
    assert again.returncode == 1 and "no client" in again.stderr
    assert _cli(cfg, "clients", "list").stdout == ""
