"""The `/auth` endpoints end to end: a real gateway on a real port, a real SQLite file, the demo upstream.

Time moves only through the injected FakeClock; the one real wait is for the background revocation poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import sqlite3
import time
from datetime import timedelta
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse, WSMsgType
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from gateway.http.keys import CONFIG, SESSIONS
from gateway.store import UserRecord, open_store
from tests.conftest import MakeConfig, MakeGateway
from tests.support import FakeClock

Client = TestClient[Any, Any]

EMAIL = "alice@example.com"
OTHER_EMAIL = "bob@example.com"
PASSWORD = "correct horse battery staple"
ACCESS_TTL = 300
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


# -- helpers ---------------------------------------------------------------------------------


def origin(client: Client) -> str:
    return f"http://127.0.0.1:{client.port}"


async def add_user(client: Client, email: str = EMAIL, password: str = PASSWORD) -> UserRecord:
    return await client.server.app[SESSIONS].add_user(email, password)


async def login(client: Client, email: str = EMAIL, password: str = PASSWORD, **extra: Any) -> ClientResponse:
    """A browser-like login: JSON body and the gateway's own Origin."""
    return await client.post(
        "/auth/login", json={"email": email, "password": password, **extra}, headers={"Origin": origin(client)}
    )


async def body_login(client: Client, email: str = EMAIL, **extra: Any) -> dict[str, Any]:
    """A non-browser login (`refresh_in_body`); the cookie jar is emptied so later calls carry no cookies."""
    resp = await login(client, email, refresh_in_body=True, **extra)
    assert resp.status == 200, await resp.text()
    client.session.cookie_jar.clear()
    data: dict[str, Any] = await resp.json()
    return data


async def refresh_body(client: Client, token: str) -> ClientResponse:
    return await client.post("/auth/refresh-token", json={"refresh_token": token})


async def cookie_login(client: Client, **extra: Any) -> tuple[ClientResponse, dict[str, str]]:
    """A browser login; returns the response and the headers a browser would send back to /auth (Cookie, Origin).

    The cookies are sent explicitly: the fixture's jar stores Secure cookies but, because aiohttp compares
    `treat_as_secure_origin` with the port included, never sends them back to http://127.0.0.1:<port>.
    """
    resp = await login(client, **extra)
    assert resp.status == 200, await resp.text()
    client.session.cookie_jar.clear()
    return resp, browser_headers(client, resp)


def browser_headers(client: Client, resp: ClientResponse) -> dict[str, str]:
    """Cookie (from this response's Set-Cookie) and Origin headers of the gateway itself."""
    jar = "; ".join(f"{name}={value}" for name, (value, _) in set_cookies(resp).items())
    return {"Cookie": jar, "Origin": origin(client)}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def set_cookies(resp: ClientResponse) -> dict[str, tuple[str, dict[str, str]]]:
    """The raw Set-Cookie headers by name: (value, {lower-case attribute: value, "" for flags})."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for raw in resp.headers.getall("Set-Cookie", []):
        first, *attrs = [part.strip() for part in raw.split(";")]
        name, _, value = first.partition("=")
        parsed: dict[str, str] = {}
        for attr in attrs:
            key, _, val = attr.partition("=")
            parsed[key.lower()] = val
        out[name] = (value, parsed)
    return out


def assert_cookies_cleared(resp: ClientResponse) -> None:
    cookies = set_cookies(resp)
    assert cookies["refresh_token"] == ('""', {"httponly": "", "secure": "", "samesite": "Lax", "path": "/auth", "max-age": "0"})
    assert cookies["access_token"] == ('""', {"httponly": "", "secure": "", "samesite": "Lax", "path": "/", "max-age": "0"})


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def whoami(client: Client, access: str) -> ClientResponse:
    return await client.get("/api/whoami", headers=bearer(access))


async def assert_revoked(client: Client, access: str) -> None:
    resp = await whoami(client, access)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"] == "invalid_token"
    assert "revoked" in body["error_description"]
    assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


async def gateway_with_user(make_gateway: MakeGateway, make_config: MakeConfig, **tables: Any) -> Client:
    client = await make_gateway(make_config(**tables))
    await add_user(client)
    return client


# -- login -----------------------------------------------------------------------------------


async def test_login_json_body_returns_access_token_and_cookies(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    user = await add_user(client)
    resp = await client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == ACCESS_TTL
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt" and header["kid"]
    c = claims(body["access_token"])
    assert c["sub"] == user.id and c["email"] == EMAIL and c["exp"] - c["iat"] == ACCESS_TTL
    sessions = await client.server.app[SESSIONS].list_sessions(user.id)
    assert [s.id for s in sessions] == [c["sid"]]
    cookies = set_cookies(resp)
    assert set(cookies) == {"refresh_token", "access_token"}
    assert cookies["access_token"][0] == body["access_token"]
    assert (await whoami(client, body["access_token"])).status == 200


async def test_login_hash_made_by_argon2_defaults_still_verifies(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    service = client.server.app[SESSIONS]
    # A hash with argon2-cffi's default parameters (four lanes) still logs in: parameters live in the hash.
    legacy = PasswordHasher().hash(PASSWORD)
    await service.store.create_user(user_id="u-legacy", email=EMAIL, email_key=EMAIL, password_hash=legacy, now=time.time())
    assert (await login(client)).status == 200
    assert (await login(client, password=PASSWORD + "!")).status == 401
    # What the gateway writes is a standard argon2id hash, 64 MiB, 3 passes, one lane.
    ours = await service.hash_password(PASSWORD)
    assert ours.startswith("$argon2id$v=19$m=65536,t=3,p=1$")
    assert PasswordHasher().verify(ours, PASSWORD)


async def test_login_upgrades_an_old_hash_to_todays_parameters(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    # Before this stop check_needs_rehash was never called: an old, weaker hash stayed as it was.
    client = await make_gateway(make_config())
    service = client.server.app[SESSIONS]
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=2).hash(PASSWORD)
    await service.store.create_user(user_id="u-weak", email=EMAIL, email_key=EMAIL, password_hash=weak, now=time.time())
    assert (await login(client, password=PASSWORD + "!")).status == 401
    assert (await service.store.get_user(user_id="u-weak")).password_hash == weak  # a wrong password changes nothing
    first = await login(client)
    assert first.status == 200
    upgraded = (await service.store.get_user(user_id="u-weak")).password_hash
    assert upgraded != weak and upgraded.startswith("$argon2id$v=19$m=65536,t=3,p=1$")
    assert PasswordHasher().verify(upgraded, PASSWORD)
    # The session the login opened is not revoked by the upgrade (the password did not change).
    client.session.cookie_jar.clear()
    access = (await first.json())["access_token"]
    assert (await client.get("/api/whoami", headers={"Authorization": f"Bearer {access}"})).status == 200
    assert (await login(client)).status == 200


async def test_login_form_body_succeeds(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    resp = await client.post("/auth/login", data={"email": EMAIL, "password": PASSWORD, "remember_me": "true"})
    assert resp.status == 200
    assert (await resp.json())["token_type"] == "Bearer"
    assert "max-age" in set_cookies(resp)["refresh_token"][1]


@pytest.mark.parametrize("typed", ["  alice@EXAMPLE.com  ", "ALICE@example.COM", "alice@example.com"])
async def test_login_email_case_and_spaces_ignored(make_gateway: MakeGateway, make_config: MakeConfig, typed: str) -> None:
    client = await make_gateway(make_config())
    await add_user(client, "Alice@Example.com ")
    resp = await login(client, typed)
    assert resp.status == 200


async def test_login_remember_me_cookie_attributes_exact(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config, tokens={"refresh_ttl": "30d", "absolute_ttl": "90d"})
    resp = await login(client, remember_me=True)
    cookies = set_cookies(resp)
    refresh_value, refresh_attrs = cookies["refresh_token"]
    assert len(refresh_value) >= 43  # 256 random bits, base64url
    assert refresh_attrs == {"httponly": "", "secure": "", "samesite": "Lax", "path": "/auth", "max-age": str(30 * 86400)}
    assert cookies["access_token"][1] == {"httponly": "", "secure": "", "samesite": "Lax", "path": "/", "max-age": str(ACCESS_TTL)}


async def test_login_without_remember_me_refresh_cookie_has_no_max_age(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    resp = await login(client)
    cookies = set_cookies(resp)
    assert cookies["refresh_token"][1] == {"httponly": "", "secure": "", "samesite": "Lax", "path": "/auth"}
    assert cookies["access_token"][1] == {"httponly": "", "secure": "", "samesite": "Lax", "path": "/", "max-age": str(ACCESS_TTL)}


async def test_login_samesite_from_config_in_cookies(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config, cookies={"samesite": "Strict"})
    cookies = set_cookies(await login(client))
    assert cookies["refresh_token"][1]["samesite"] == "Strict"
    assert cookies["access_token"][1]["samesite"] == "Strict"


async def test_login_refresh_in_body_returns_token_without_refresh_cookie(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    resp = await login(client, refresh_in_body=True)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert "refresh_token" not in set_cookies(resp)
    assert (await refresh_body(client, body["refresh_token"])).status == 200


@pytest.mark.parametrize(
    ("delivery", "in_body", "in_cookie"), [("body", True, False), ("cookie", False, True), ("both", True, True)]
)
async def test_login_access_delivery_honoured(
    make_gateway: MakeGateway, make_config: MakeConfig, delivery: str, in_body: bool, in_cookie: bool
) -> None:
    client = await gateway_with_user(make_gateway, make_config, tokens={"access_delivery": delivery})
    resp, _ = await cookie_login(client)
    body = await resp.json()
    cookies = set_cookies(resp)
    assert ("access_token" in body) is in_body
    assert ("access_token" in cookies) is in_cookie
    assert "refresh_token" in cookies
    # with cookie delivery the access cookie alone authenticates an API call
    if in_cookie:
        jar = {"Cookie": f"access_token={cookies['access_token'][0]}"}
        assert (await client.get("/api/whoami", headers=jar)).status == 200


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("invalid_json", b'{"email": "alice@example.com", ', "application/json"),
    ("non_object", b'["alice@example.com", "x"]', "application/json"),
    ("json_string", b'"hello"', "application/json"),
    ("missing_password", b'{"email": "alice@example.com"}', "application/json"),
    ("missing_email", b'{"password": "correct horse battery staple"}', "application/json"),
    ("empty", b"", "application/json"),
    ("email_number", b'{"email": 5, "password": "correct horse battery staple"}', "application/json"),
    ("password_number", b'{"email": "alice@example.com", "password": 12345678}', "application/json"),
    ("password_null", b'{"email": "alice@example.com", "password": null}', "application/json"),
    ("remember_me_number", b'{"email": "alice@example.com", "password": "correct horse battery staple", "remember_me": 3}', "application/json"),
    ("email_not_address", b'{"email": "alice", "password": "correct horse battery staple"}', "application/json"),
    ("form_malformed", b"email=a%ZZ&&password", "application/x-www-form-urlencoded"),
    ("unsupported_type", b"email alice", "text/plain"),
]


async def test_login_body_over_16k_is_413(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    body = b'{"email": "alice@example.com", "password": "' + b"x" * 17000 + b'"}'
    resp = await client.post("/auth/login", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"


@pytest.mark.parametrize(("body", "ctype"), [(b, c) for _, b, c in BAD_BODIES], ids=[n for n, _, _ in BAD_BODIES])
async def test_login_bad_body_is_400(make_gateway: MakeGateway, make_config: MakeConfig, body: bytes, ctype: str) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    resp = await client.post("/auth/login", data=body, headers={"Content-Type": ctype})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"


async def test_login_huge_chunked_body_is_413(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)

    async def chunks() -> Any:
        yield b'{"email": "alice@example.com", "password": "'
        for _ in range(20):
            yield b"x" * 1024
        yield b'"}'

    resp = await client.post("/auth/login", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"


async def test_login_bad_refresh_in_body_flag_opens_no_session(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    user = await add_user(client)
    resp = await client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": 7})
    assert resp.status == 400
    assert await client.server.app[SESSIONS].list_sessions(user.id) == []


async def test_login_failures_answer_identically(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    await add_user(client)
    await add_user(client, OTHER_EMAIL)
    await client.server.app[SESSIONS].set_disabled(OTHER_EMAIL, disabled=True)
    answers = []
    for email, password in [("nobody@example.com", PASSWORD), (EMAIL, "wrong password!"), (OTHER_EMAIL, PASSWORD)]:
        resp = await client.post("/auth/login", json={"email": email, "password": password})
        answers.append((resp.status, await resp.json(), resp.headers.get("WWW-Authenticate"), "Set-Cookie" in resp.headers))
    assert answers[0][0] == 401 and answers[0][1]["error"] == "invalid_credentials"
    assert answers[0][2] == 'Bearer realm="gateway"' and answers[0][3] is False
    assert answers[0] == answers[1] == answers[2]


async def test_login_foreign_origin_is_csrf_failed(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    user = await add_user(client)
    resp = await client.post(
        "/auth/login", json={"email": EMAIL, "password": PASSWORD}, headers={"Origin": "https://evil.example"}
    )
    assert resp.status == 403
    assert (await resp.json())["error"] == "csrf_failed"
    assert await client.server.app[SESSIONS].list_sessions(user.id) == []


# -- refresh ---------------------------------------------------------------------------------


async def test_refresh_cookie_with_own_origin_rotates_cookie(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    logged_in, headers = await cookie_login(client)
    first = set_cookies(logged_in)["refresh_token"][0]
    resp = await client.post("/auth/refresh-token", headers=headers)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert "refresh_token" not in body and body["token_type"] == "Bearer"
    cookies = set_cookies(resp)
    assert cookies["refresh_token"][0] not in (first, "", '""')
    assert cookies["refresh_token"][1] == {"httponly": "", "secure": "", "samesite": "Lax", "path": "/auth"}
    assert (await whoami(client, body["access_token"])).status == 200


async def test_refresh_cookie_without_origin_is_csrf_failed(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    _, headers = await cookie_login(client)
    resp = await client.post("/auth/refresh-token", headers={"Cookie": headers["Cookie"]})
    assert resp.status == 403
    assert (await resp.json())["error"] == "csrf_failed"


async def test_refresh_json_body_answered_in_body(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    resp = await refresh_body(client, tokens["refresh_token"])
    assert resp.status == 200
    body = await resp.json()
    assert body["refresh_token"] != tokens["refresh_token"]
    assert "refresh_token" not in set_cookies(resp)
    assert (await whoami(client, body["access_token"])).status == 200
    assert (await refresh_body(client, body["refresh_token"])).status == 200


async def test_refresh_body_wins_over_cookie(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    other = await body_login(client)
    _, headers = await cookie_login(client)  # another session's refresh cookie goes along
    resp = await client.post("/auth/refresh-token", json={"refresh_token": other["refresh_token"]}, headers=headers)
    assert resp.status == 200
    body = await resp.json()
    assert claims(body["access_token"])["sid"] == claims(other["access_token"])["sid"]
    assert "refresh_token" in body and "refresh_token" not in set_cookies(resp)


async def test_refresh_old_token_after_grace_is_reused_and_revokes_only_that_session(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    victim = await body_login(client)
    laptop = await body_login(client)
    rotated = await (await refresh_body(client, victim["refresh_token"])).json()
    clock.advance(11)  # reuse_grace is 10s
    resp = await refresh_body(client, victim["refresh_token"])
    assert resp.status == 403
    assert (await resp.json())["error"] == "refresh_token_reused"
    assert_cookies_cleared(resp)
    await assert_revoked(client, rotated["access_token"])
    await assert_revoked(client, victim["access_token"])
    assert (await refresh_body(client, rotated["refresh_token"])).status == 403
    # the same user's other device lives on
    assert (await whoami(client, laptop["access_token"])).status == 200
    assert (await refresh_body(client, laptop["refresh_token"])).status == 200


async def test_refresh_old_token_within_grace_returns_same_successor(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    first = await (await refresh_body(client, tokens["refresh_token"])).json()
    clock.advance(9)
    resp = await refresh_body(client, tokens["refresh_token"])
    assert resp.status == 200
    second = await resp.json()
    assert second["refresh_token"] == first["refresh_token"]
    assert (await whoami(client, second["access_token"])).status == 200
    assert (await whoami(client, first["access_token"])).status == 200
    assert (await refresh_body(client, second["refresh_token"])).status == 200


async def test_refresh_50_concurrent_same_token_one_rotation(
    make_gateway: MakeGateway, make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    cfg = make_config()
    client = await make_gateway(cfg)
    await add_user(client)
    tokens = await body_login(client)
    sid = claims(tokens["access_token"])["sid"]
    responses = await asyncio.gather(*(refresh_body(client, tokens["refresh_token"]) for _ in range(50)))
    assert [r.status for r in responses] == [200] * 50
    bodies = [await r.json() for r in responses]
    successors = {b["refresh_token"] for b in bodies}
    assert len(successors) == 1 and tokens["refresh_token"] not in successors
    assert cfg.store.sqlite_path is not None
    with sqlite3.connect(cfg.store.sqlite_path) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM refresh_tokens WHERE session_id = ?", (sid,)).fetchone()
    assert rows == (2,)
    refreshes = [r for r in caplog.records if r.name == "gateway.audit" and r.getMessage() == "refresh"]
    assert [r.fields["reason"] for r in refreshes].count("rotated") == 1  # type: ignore[attr-defined]
    assert len(refreshes) == 50
    after = await refresh_body(client, successors.pop())
    assert after.status == 200
    assert (await whoami(client, (await after.json())["access_token"])).status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh-token"),
        ("POST", "/auth/logout"),
        ("GET", "/auth/sessions"),
        ("DELETE", "/auth/sessions/some-id"),
        ("GET", "/auth/no-such-endpoint"),
    ],
)
async def test_refresh_token_in_url_is_400_and_revokes_session(
    make_gateway: MakeGateway, make_config: MakeConfig, method: str, path: str
) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    resp = await client.request(method, path, params={"refresh_token": tokens["refresh_token"]}, headers=bearer(tokens["access_token"]))
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"
    await assert_revoked(client, tokens["access_token"])
    assert (await refresh_body(client, tokens["refresh_token"])).status == 403


async def test_refresh_token_in_url_unknown_is_400(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    resp = await client.post("/auth/refresh-token", params={"refresh_token": "not-a-token"})
    assert resp.status == 400


async def test_refresh_missing_token_is_401(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    resp = await client.post("/auth/refresh-token")
    assert resp.status == 401
    assert (await resp.json())["error"] == "missing_refresh_token"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


async def test_refresh_unknown_token_is_403_and_clears_cookies(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    resp = await refresh_body(client, "A" * 43)
    assert resp.status == 403
    assert (await resp.json())["error"] == "invalid_refresh_token"
    assert_cookies_cleared(resp)


async def test_refresh_expired_session_is_403(make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock) -> None:
    client = await gateway_with_user(make_gateway, make_config, tokens={"session_ttl": "1h"})
    tokens = await body_login(client)
    clock.advance(3601)
    resp = await refresh_body(client, tokens["refresh_token"])
    assert resp.status == 403
    assert (await resp.json())["error"] == "invalid_refresh_token"
    assert_cookies_cleared(resp)


async def test_refresh_disabled_user_is_403_and_access_revoked(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    await client.server.app[SESSIONS].set_disabled(EMAIL, disabled=True)
    await assert_revoked(client, tokens["access_token"])
    resp = await refresh_body(client, tokens["refresh_token"])
    assert resp.status == 403
    assert (await resp.json())["error"] == "invalid_refresh_token"


async def test_refresh_lifetime_slides_and_stops_at_absolute(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await gateway_with_user(
        make_gateway, make_config, tokens={"session_ttl": "100s", "refresh_ttl": "200s", "absolute_ttl": "300s"}
    )
    token = (await body_login(client))["refresh_token"]
    for _ in range(3):  # t = 90, 180, 270: each would be dead without sliding from the previous refresh
        clock.advance(90)
        resp = await refresh_body(client, token)
        assert resp.status == 200
        token = (await resp.json())["refresh_token"]
    clock.advance(29)  # t = 299: session_ttl would allow until 370, absolute_ttl ends at 300
    resp = await refresh_body(client, token)
    assert resp.status == 200
    token = (await resp.json())["refresh_token"]
    clock.advance(2)
    resp = await refresh_body(client, token)
    assert resp.status == 403
    assert (await resp.json())["error"] == "invalid_refresh_token"


async def test_refresh_remember_me_cookie_max_age_slides_then_capped(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await gateway_with_user(
        make_gateway, make_config, tokens={"session_ttl": "100s", "refresh_ttl": "200s", "absolute_ttl": "300s"}
    )
    resp, headers = await cookie_login(client, remember_me=True)
    assert set_cookies(resp)["refresh_token"][1]["max-age"] == "200"
    clock.advance(50)
    resp = await client.post("/auth/refresh-token", headers=headers)
    assert resp.status == 200
    assert set_cookies(resp)["refresh_token"][1]["max-age"] == "200"  # slid: expires at 250
    clock.advance(180)  # t = 230: sliding would give 430, absolute_ttl ends at 300
    headers["Cookie"] = f"refresh_token={set_cookies(resp)['refresh_token'][0]}"
    resp = await client.post("/auth/refresh-token", headers=headers)
    assert resp.status == 200
    assert set_cookies(resp)["refresh_token"][1]["max-age"] == "70"


async def test_access_token_exp_capped_by_absolute_ttl(make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock) -> None:
    client = await gateway_with_user(make_gateway, make_config, tokens={"access_ttl": "5m", "absolute_ttl": "60s"})
    resp = await login(client, refresh_in_body=True)
    body = await resp.json()
    assert body["expires_in"] == 60
    c = claims(body["access_token"])
    assert c["exp"] - c["iat"] == 60
    assert set_cookies(resp)["access_token"][1]["max-age"] == "60"
    clock.advance(50)
    later = await (await refresh_body(client, body["refresh_token"])).json()
    c2 = claims(later["access_token"])
    assert later["expires_in"] == 10 and c2["exp"] == c["exp"]


# -- logout ----------------------------------------------------------------------------------


async def test_logout_refresh_cookie_revokes_and_clears(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    resp, headers = await cookie_login(client)
    access = (await resp.json())["access_token"]
    refresh = set_cookies(resp)["refresh_token"][0]
    out = await client.post("/auth/logout", headers=headers)
    assert out.status == 204
    assert out.headers["Cache-Control"] == "no-store"
    assert_cookies_cleared(out)
    await assert_revoked(client, access)
    assert (await refresh_body(client, refresh)).status == 403
    again = await client.post("/auth/logout", headers=headers)
    assert again.status == 204
    assert_cookies_cleared(again)


async def test_logout_body_token_revokes(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    other = await body_login(client)
    resp = await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 204
    await assert_revoked(client, tokens["access_token"])
    assert (await refresh_body(client, tokens["refresh_token"])).status == 403
    assert (await whoami(client, other["access_token"])).status == 200
    assert (await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status == 204


async def test_logout_expired_access_token_revokes_its_session(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    clock.advance(ACCESS_TTL + 60)
    assert (await whoami(client, tokens["access_token"])).status == 401  # expired
    resp = await client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert resp.status == 204
    assert (await refresh_body(client, tokens["refresh_token"])).status == 403


async def test_logout_forged_access_token_revokes_nothing(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    sid = claims(tokens["access_token"])["sid"]
    forged = jwt.encode(
        {**claims(tokens["access_token"]), "sid": sid}, "another-secret-another-secret-0123456789",
        algorithm="HS256", headers={"typ": "at+jwt", "kid": jwt.get_unverified_header(tokens["access_token"])["kid"]},
    )  # fmt: skip
    resp = await client.post("/auth/logout", headers=bearer(forged))
    assert resp.status == 204
    assert (await whoami(client, tokens["access_token"])).status == 200


async def test_logout_all_revokes_every_session_of_user(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    await add_user(client, OTHER_EMAIL)
    a = await body_login(client)
    b = await body_login(client)
    bob = await body_login(client, OTHER_EMAIL)
    resp = await client.post("/auth/logout-all", headers=bearer(a["access_token"]))
    assert resp.status == 204
    for tokens in (a, b):
        await assert_revoked(client, tokens["access_token"])
        assert (await refresh_body(client, tokens["refresh_token"])).status == 403
    assert (await whoami(client, bob["access_token"])).status == 200


async def test_logout_all_without_auth_is_401(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    resp = await client.post("/auth/logout-all")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


# -- session views ---------------------------------------------------------------------------


async def test_sessions_list_live_sessions_with_fields(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    resp = await client.post(
        "/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": True}, headers={"User-Agent": "Phone/1.0"}
    )
    phone = await resp.json()
    client.session.cookie_jar.clear()
    resp = await client.post(
        "/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": True}, headers={"User-Agent": "Laptop/2.0"}
    )
    laptop = await resp.json()
    client.session.cookie_jar.clear()
    gone = await body_login(client)
    await client.post("/auth/logout", json={"refresh_token": gone["refresh_token"]})
    resp = await client.get("/auth/sessions", headers=bearer(phone["access_token"]))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    listed = (await resp.json())["sessions"]
    by_id = {s["id"]: s for s in listed}
    assert set(by_id) == {claims(phone["access_token"])["sid"], claims(laptop["access_token"])["sid"]}
    for s in listed:
        assert set(s) == {"id", "created_at", "last_used_at", "expires_at", "user_agent", "ip", "current"}
        for key in ("created_at", "last_used_at", "expires_at"):
            assert ISO_Z.match(s[key]), s[key]
        assert s["ip"] == "127.0.0.1"
    mine = by_id[claims(phone["access_token"])["sid"]]
    theirs = by_id[claims(laptop["access_token"])["sid"]]
    assert mine["current"] is True and theirs["current"] is False
    assert mine["user_agent"] == "Phone/1.0" and theirs["user_agent"] == "Laptop/2.0"


async def test_sessions_list_times_follow_clock(make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock) -> None:
    clock.now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    client = await gateway_with_user(make_gateway, make_config, tokens={"session_ttl": "1h"})
    tokens = await body_login(client)
    clock.advance(60)
    rotated = await (await refresh_body(client, tokens["refresh_token"])).json()
    listed = (await (await client.get("/auth/sessions", headers=bearer(rotated["access_token"]))).json())["sessions"]
    assert [(s["created_at"], s["last_used_at"], s["expires_at"]) for s in listed] == [
        ("2023-11-14T22:13:20Z", "2023-11-14T22:14:20Z", "2023-11-14T23:14:20Z")
    ]


async def test_sessions_list_without_auth_is_401(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config())
    resp = await client.get("/auth/sessions")
    assert resp.status == 401


async def test_sessions_delete_other_own_session_204_without_clearing(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    me = await body_login(client)
    other = await body_login(client)
    sid = claims(other["access_token"])["sid"]
    resp = await client.delete(f"/auth/sessions/{sid}", headers=bearer(me["access_token"]))
    assert resp.status == 204
    assert "Set-Cookie" not in resp.headers
    await assert_revoked(client, other["access_token"])
    assert (await whoami(client, me["access_token"])).status == 200


async def test_sessions_delete_current_session_clears_cookies(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    me = await body_login(client)
    sid = claims(me["access_token"])["sid"]
    resp = await client.delete(f"/auth/sessions/{sid}", headers=bearer(me["access_token"]))
    assert resp.status == 204
    assert_cookies_cleared(resp)
    await assert_revoked(client, me["access_token"])


async def test_sessions_delete_another_users_session_is_404(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    await add_user(client, OTHER_EMAIL)
    me = await body_login(client)
    bob = await body_login(client, OTHER_EMAIL)
    resp = await client.delete(f"/auth/sessions/{claims(bob['access_token'])['sid']}", headers=bearer(me["access_token"]))
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    assert (await whoami(client, bob["access_token"])).status == 200
    unknown = await client.delete("/auth/sessions/no-such-session", headers=bearer(me["access_token"]))
    assert unknown.status == 404


async def test_sessions_delete_with_cookie_needs_origin(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    resp, headers = await cookie_login(client)
    access = (await resp.json())["access_token"]
    sid = claims(access)["sid"]
    refused = await client.delete(f"/auth/sessions/{sid}", headers={"Cookie": headers["Cookie"]})
    assert refused.status == 403
    assert (await refused.json())["error"] == "csrf_failed"
    assert (await whoami(client, access)).status == 200
    assert (await client.delete(f"/auth/sessions/{sid}", headers=headers)).status == 204
    await assert_revoked(client, access)


# -- limits ----------------------------------------------------------------------------------


async def test_limits_login_fourth_failure_is_429(make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock) -> None:
    client = await gateway_with_user(make_gateway, make_config, limits={"login": "3/minute"})
    for _ in range(3):
        assert (await login(client, password="wrong password!")).status == 401
    resp = await login(client)  # the right password: the limit is checked first
    assert resp.status == 429
    assert (await resp.json())["error"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    clock.advance(61)
    assert (await login(client)).status == 200


async def test_limits_login_successes_do_not_count(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config, limits={"login": "3/minute"})
    for _ in range(5):
        assert (await client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": True})).status == 200
        client.session.cookie_jar.clear()


async def test_limits_login_parallel_burst_counted(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config, limits={"login": "3/minute"})
    responses = await asyncio.gather(*(login(client, password=f"wrong password {i}") for i in range(12)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [401] * 3 + [429] * 9
    assert (await login(client)).status == 429


async def test_limits_login_parallel_burst_with_success_counts_only_failures(
    make_gateway: MakeGateway, make_config: MakeConfig
) -> None:
    client = await gateway_with_user(make_gateway, make_config, limits={"login": "3/minute"})
    good = client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": True})
    bad = [login(client, password="wrong password!") for _ in range(2)]
    responses = await asyncio.gather(good, *bad)
    assert sorted(r.status for r in responses) == [200, 401, 401]
    client.session.cookie_jar.clear()
    # the success gave its slot back: two failures so far, one more is still answered
    assert (await login(client, password="wrong password!")).status == 401
    assert (await login(client, password="wrong password!")).status == 429


async def test_limits_login_counted_per_email(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(
        make_gateway, make_config, limits={"login": "3/minute"}, server={"trusted_proxies": ["127.0.0.1/32"]}
    )
    await add_user(client, OTHER_EMAIL)

    async def attempt(email: str, address: str, password: str = "wrong password!") -> int:
        resp = await client.post(
            "/auth/login", json={"email": email, "password": password}, headers={"X-Forwarded-For": address}
        )
        return resp.status

    for i in range(3):
        assert await attempt(EMAIL, f"198.51.100.{i + 1}") == 401
    assert await attempt(EMAIL, "198.51.100.9", PASSWORD) == 429
    assert await attempt(OTHER_EMAIL, "198.51.100.10", PASSWORD) == 200


async def test_limits_login_counted_per_address(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(
        make_gateway, make_config, limits={"login": "3/minute"}, server={"trusted_proxies": ["127.0.0.1/32"]}
    )

    async def attempt(email: str, address: str, password: str = "wrong password!") -> int:
        resp = await client.post(
            "/auth/login", json={"email": email, "password": password}, headers={"X-Forwarded-For": address}
        )
        return resp.status

    for i in range(3):
        assert await attempt(f"user{i}@example.com", "203.0.113.5") == 401
    assert await attempt(EMAIL, "203.0.113.5", PASSWORD) == 429
    assert await attempt(EMAIL, "203.0.113.6", PASSWORD) == 200


@pytest.mark.parametrize(
    ("trusted", "chain"),
    [
        (["127.0.0.1/32"], "{spoof}, 203.0.113.5"),
        (["127.0.0.1/32", "10.0.0.0/8"], "{spoof}, 203.0.113.5, 10.1.2.3"),
    ],
    ids=["one-appending-proxy", "two-trusted-hops"],
)
async def test_limits_login_rotating_spoofed_first_hop_behind_appending_proxy_still_limited(
    make_gateway: MakeGateway, make_config: MakeConfig, trusted: list[str], chain: str
) -> None:
    # An appending proxy keeps whatever X-Forwarded-For the client sent and adds the real address
    # after it: the client controls the left of the chain, never the hop the proxies wrote.
    client = await gateway_with_user(
        make_gateway, make_config, limits={"login": "3/minute"}, server={"trusted_proxies": trusted}
    )

    async def attempt(i: int, password: str = "wrong password!") -> int:
        forwarded = chain.format(spoof=f"198.51.100.{i}")
        resp = await client.post("/auth/login", json={"email": f"user{i}@example.com", "password": password},
                                 headers={"X-Forwarded-For": forwarded})  # fmt: skip
        return resp.status

    assert [await attempt(i) for i in range(1, 4)] == [401, 401, 401]
    await add_user(client, "user9@example.com", PASSWORD)
    assert await attempt(9, PASSWORD) == 429
    other = await client.post("/auth/login", json={"email": "user9@example.com", "password": PASSWORD},
                              headers={"X-Forwarded-For": "203.0.113.6"})  # fmt: skip
    assert other.status == 200


async def test_limits_refresh_per_session_429(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config, limits={"refresh": "2/minute"})
    tokens = await body_login(client)
    other = await body_login(client)
    token = tokens["refresh_token"]
    for _ in range(2):
        resp = await refresh_body(client, token)
        assert resp.status == 200
        token = (await resp.json())["refresh_token"]
    resp = await refresh_body(client, token)
    assert resp.status == 429
    assert (await resp.json())["error"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert (await refresh_body(client, other["refresh_token"])).status == 200


async def test_limits_refresh_refused_rotates_nothing(make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock) -> None:
    client = await gateway_with_user(make_gateway, make_config, limits={"refresh": "1/minute"})
    token = (await body_login(client))["refresh_token"]
    resp = await refresh_body(client, token)
    assert resp.status == 200
    token = (await resp.json())["refresh_token"]
    assert (await refresh_body(client, token)).status == 429
    clock.advance(61)
    # the refused token is still the current one: neither rotated nor counted as reused
    resp = await refresh_body(client, token)
    assert resp.status == 200, await resp.text()


# -- revocation that bites at once -----------------------------------------------------------


async def test_revocation_logout_old_access_token_refused_next_request(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    assert (await whoami(client, tokens["access_token"])).status == 200
    assert (await client.post("/auth/logout", headers=bearer(tokens["access_token"]))).status == 204
    await assert_revoked(client, tokens["access_token"])


async def _await_revoked(client: Client, access: str, *, within: float = 1.5) -> int:
    """Polls the gateway until the background revocation poll has caught up; returns the last status."""
    deadline = time.monotonic() + within
    status = 0
    while time.monotonic() < deadline:
        status = (await whoami(client, access)).status
        if status == 401:
            break
        await asyncio.sleep(0.05)
    return status


async def test_revocation_by_other_process_picked_up_by_poll(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    cfg = make_config()
    client = await make_gateway(cfg)
    await add_user(client)
    tokens = await body_login(client)
    other = await body_login(client)
    sid = claims(tokens["access_token"])["sid"]
    second = await open_store(client.server.app[CONFIG].store)
    try:
        assert await second.revoke(now=time.time(), reason="admin", session_id=sid) == [sid]
    finally:
        await second.aclose()
    assert await _await_revoked(client, tokens["access_token"]) == 401
    await assert_revoked(client, tokens["access_token"])
    assert (await whoami(client, other["access_token"])).status == 200


async def test_revocation_before_restart_still_refused_by_the_next_gateway(
    make_gateway: MakeGateway, make_config: MakeConfig
) -> None:
    cfg = make_config()
    first = await make_gateway(cfg)
    await add_user(first)
    revoked = await body_login(first)
    kept = await body_login(first)
    assert (await first.post("/auth/logout", headers=bearer(revoked["access_token"]))).status == 204
    await first.close()  # stops the server and closes its store: nothing of it lives on in memory
    # The next gateway on the same file polls only once an hour, so only its start-up replay of the
    # revocation log can know that the session was revoked.
    slow_poll = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, revocation_poll=timedelta(hours=1)))
    second = await make_gateway(slow_poll)
    await assert_revoked(second, revoked["access_token"])
    assert (await whoami(second, kept["access_token"])).status == 200


async def test_revocation_logout_closes_proxied_websocket(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    async with client.ws_connect("/api/ws", headers=bearer(tokens["access_token"])) as ws:
        await ws.send_str("ping")
        echoed = await asyncio.wait_for(ws.receive(), 2)
        assert echoed.type == WSMsgType.TEXT and "ping" in echoed.data
        assert (await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status == 204
        msg = await asyncio.wait_for(ws.receive(), 1.0)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert ws.close_code == 1008


async def test_revocation_by_other_process_closes_proxied_websocket(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await gateway_with_user(make_gateway, make_config)
    tokens = await body_login(client)
    sid = claims(tokens["access_token"])["sid"]
    async with client.ws_connect("/api/ws", headers=bearer(tokens["access_token"])) as ws:
        await ws.send_str("ping")
        await asyncio.wait_for(ws.receive(), 2)
        second = await open_store(client.server.app[CONFIG].store)
        try:
            await second.revoke(now=time.time(), reason="admin", session_id=sid)
        finally:
            await second.aclose()
        msg = await asyncio.wait_for(ws.receive(), 1.5)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert ws.close_code == 1008


# -- audit -----------------------------------------------------------------------------------


async def test_audit_events_logged_without_secrets(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    client = await gateway_with_user(make_gateway, make_config)
    wrong = "not the password at all"
    assert (await login(client, password=wrong)).status == 401
    tokens = await body_login(client)
    rotated = await (await refresh_body(client, tokens["refresh_token"])).json()
    clock.advance(11)
    assert (await refresh_body(client, tokens["refresh_token"])).status == 403
    again = await body_login(client)
    assert (await client.post("/auth/logout", json={"refresh_token": again["refresh_token"]})).status == 204

    records = [r for r in caplog.records if r.name == "gateway.audit"]
    events = [r.fields["event"] for r in records]  # type: ignore[attr-defined]
    for expected in ("login_failure", "login_success", "refresh", "reuse_detected", "session_revoked"):
        assert expected in events, events
    sid = claims(tokens["access_token"])["sid"]
    reuse = next(r.fields for r in records if r.fields["event"] == "reuse_detected")  # type: ignore[attr-defined]
    assert reuse["session_id"] == sid and reuse["ip"] == "127.0.0.1" and reuse["user_id"]
    logout = [r.fields for r in records if r.fields["event"] == "session_revoked"]  # type: ignore[attr-defined]
    assert {f["reason"] for f in logout} == {"refresh_token_reused", "logout"}
    secrets = [PASSWORD, wrong]
    for t in (tokens, rotated, again):
        secrets += [t["access_token"], t["refresh_token"]]
    for record in records:
        text = f"{record.getMessage()} {record.__dict__!r}"
        for secret in secrets:
            assert secret not in text
