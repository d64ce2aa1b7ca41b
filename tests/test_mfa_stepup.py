"""Step-up (RFC 9470) on a route whose policy says `mfa = true`, against sessions made by each login kind.

A real gateway and demo upstream; codes are real TOTP codes at the injected FakeClock's time.
"""

from __future__ import annotations

from typing import Any

import pyotp
import pytest
from aiohttp.test_utils import TestClient

from gateway.http.keys import SESSIONS
from gateway.mfa.keys import MFA
from tests.conftest import MakeConfig, MakeGateway
from tests.support import FakeClock

Client = TestClient[Any, Any]

EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"
STEP_UP = 'Bearer error="insufficient_user_authentication"'


@pytest.fixture
async def gw(make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str) -> Client:
    cfg = make_config(
        routes=[
            {"prefix": "/api", "upstream": upstream_url, "auth": "required"},
            {"prefix": "/secure", "upstream": upstream_url + "/api", "auth": "required", "strip_prefix": True,
             "allow": [{"mfa": True}]},
        ]
    )  # fmt: skip
    client = await make_gateway(cfg)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    return client


def _origin(client: Client) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{client.port}"}


async def _login(client: Client) -> dict[str, Any]:
    resp = await client.post(
        "/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": True}, headers=_origin(client)
    )
    assert resp.status == 200, await resp.text()
    client.session.cookie_jar.clear()
    body: dict[str, Any] = await resp.json()
    return body


async def _second_step(client: Client, token: str, **fields: str) -> dict[str, Any]:
    resp = await client.post("/auth/login/mfa", json={"mfa_token": token, **fields}, headers=_origin(client))
    assert resp.status == 200, await resp.text()
    client.session.cookie_jar.clear()
    body: dict[str, Any] = await resp.json()
    return body


def _auth(body: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {body['access_token']}"}


async def _enable_totp(client: Client, clock: FakeClock, auth: dict[str, str]) -> tuple[str, list[str]]:
    secret = (await (await client.post("/auth/mfa/totp/enroll", headers=auth)).json())["secret"]
    resp = await client.post(
        "/auth/mfa/totp/confirm", json={"code": pyotp.TOTP(secret).at(int(clock.now))}, headers=auth
    )
    assert resp.status == 200
    clock.advance(30)
    return secret, (await resp.json())["recovery_codes"]


async def test_stepup_password_session_is_asked_for_a_second_factor(gw: Client) -> None:
    auth = _auth(await _login(gw))
    assert (await gw.get("/api/whoami", headers=auth)).status == 200
    resp = await gw.get("/secure/whoami", headers=auth)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == STEP_UP
    assert (await resp.json())["error"] == "insufficient_user_authentication"


async def test_stepup_refresh_does_not_upgrade_a_password_session(gw: Client) -> None:
    body = await _login(gw)
    refreshed = await gw.post("/auth/refresh-token", json={"refresh_token": body["refresh_token"]})
    resp = await gw.get("/secure/whoami", headers=_auth(await refreshed.json()))
    assert (resp.status, resp.headers["WWW-Authenticate"]) == (401, STEP_UP)


async def test_stepup_totp_login_passes_and_keeps_passing_after_refresh(gw: Client, clock: FakeClock) -> None:
    secret, _ = await _enable_totp(gw, clock, _auth(await _login(gw)))
    body = await _second_step(gw, (await _login(gw))["mfa_token"], code=pyotp.TOTP(secret).at(int(clock.now)))
    resp = await gw.get("/secure/whoami", headers=_auth(body))
    assert resp.status == 200
    assert (await resp.json())["path"] == "/api/whoami"
    refreshed = await (await gw.post("/auth/refresh-token", json={"refresh_token": body["refresh_token"]})).json()
    assert (await gw.get("/secure/whoami", headers=_auth(refreshed))).status == 200


async def test_stepup_recovery_code_login_passes(gw: Client, clock: FakeClock) -> None:
    _, codes = await _enable_totp(gw, clock, _auth(await _login(gw)))
    body = await _second_step(gw, (await _login(gw))["mfa_token"], recovery_code=codes[0])
    assert (await gw.get("/secure/whoami", headers=_auth(body))).status == 200


async def test_stepup_mfa_session_is_gone_after_mfa_reset(gw: Client, clock: FakeClock) -> None:
    secret, _ = await _enable_totp(gw, clock, _auth(await _login(gw)))
    body = await _second_step(gw, (await _login(gw))["mfa_token"], code=pyotp.TOTP(secret).at(int(clock.now)))
    await gw.server.app[MFA].reset(EMAIL)
    resp = await gw.get("/secure/whoami", headers=_auth(body))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


async def test_stepup_forged_amr_is_refused(gw: Client) -> None:
    from tests.support import mint

    user = await gw.server.app[SESSIONS].get_user(EMAIL)
    forged = mint(secret="another-secret-another-secret-another-0123", sub=user.id, amr=["pwd", "otp", "mfa"])
    resp = await gw.get("/secure/whoami", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


async def test_turning_totp_off_ends_the_sessions_it_opened(gw: Client, clock: FakeClock) -> None:
    """Decision (SPEC is silent): a session opened with a TOTP or recovery code ends when TOTP is
    turned off, so `mfa = true` never passes on a factor the account no longer has. Before this stop
    such a session kept passing for its whole life. Sessions opened otherwise go on."""
    before = _auth(await _login(gw))  # password only, opened before TOTP was on
    secret, codes = await _enable_totp(gw, clock, before)
    with_otp = _auth(await _second_step(gw, (await _login(gw))["mfa_token"], code=pyotp.TOTP(secret).at(int(clock.now))))
    with_recovery = _auth(await _second_step(gw, (await _login(gw))["mfa_token"], recovery_code=codes[0]))
    for auth in (with_otp, with_recovery):
        assert (await gw.get("/secure/whoami", headers=auth)).status == 200
    clock.advance(30)
    resp = await gw.request(
        "DELETE", "/auth/mfa/totp", json={"code": pyotp.TOTP(secret).at(int(clock.now))}, headers=with_otp
    )
    assert resp.status == 204
    # The caller's own session ended too, so its cookies are cleared.
    assert resp.cookies["refresh_token"]["max-age"] == "0"
    for auth in (with_otp, with_recovery):
        assert (await gw.get("/secure/whoami", headers=auth)).status == 401
        assert (await gw.get("/api/whoami", headers=auth)).status == 401
    assert (await gw.get("/api/whoami", headers=before)).status == 200
    assert (await gw.get("/secure/whoami", headers=before)).status == 401
