"""TOTP, recovery codes and the two-step login end to end: a real gateway on a real port, real SQLite and PostgreSQL.

Codes are real RFC 6238 codes computed with pyotp at the gateway's injected FakeClock time.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import jwt
import pyotp
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.http.keys import CONFIG, SESSIONS
from gateway.mfa.keys import MFA, PASSKEYS
from gateway.mfa.secretbox import SecretBox, UnreadableSecret
from gateway.store import PasskeyRecord
from tests.conftest import MakeConfig, MakeGateway
from tests.support import FakeClock

Client = TestClient[Any, Any]

EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture(params=["sqlite", "postgres"])
def store_table(request: pytest.FixtureRequest) -> dict[str, str]:
    """The `[store]` table: the default SQLite file, or the run's (emptied) PostgreSQL database."""
    # Resolved here, in a plain fixture: the PostgreSQL fixtures start their own event loop.
    return {"url": request.getfixturevalue("pg_url")} if request.param == "postgres" else {}


@pytest.fixture
async def gw(store_table: dict[str, str], make_gateway: MakeGateway, make_config: MakeConfig) -> Client:
    """A gateway with one user, on SQLite and on PostgreSQL."""
    cfg = make_config(store=store_table) if store_table else make_config()
    client = await make_gateway(cfg)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    return client


def origin(client: Client) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{client.port}"}


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def password_login(client: Client, **extra: Any) -> ClientResponse:
    return await client.post(
        "/auth/login", json={"email": EMAIL, "password": PASSWORD, **extra}, headers=origin(client)
    )


async def bearer(client: Client) -> dict[str, str]:
    """An Authorization header of a fresh password-only session (no cookies kept)."""
    resp = await password_login(client, refresh_in_body=True)
    assert resp.status == 200, await resp.text()
    client.session.cookie_jar.clear()
    return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


def code_at(secret: str, clock: FakeClock, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(int(clock.now) + 30 * offset_steps)


async def enable_totp(client: Client, clock: FakeClock) -> tuple[str, list[str]]:
    """Enrols and confirms TOTP; returns the secret and the recovery codes. The clock moves one step on."""
    auth = await bearer(client)
    resp = await client.post("/auth/mfa/totp/enroll", headers=auth)
    assert resp.status == 200, await resp.text()
    secret = (await resp.json())["secret"]
    resp = await client.post("/auth/mfa/totp/confirm", json={"code": code_at(secret, clock)}, headers=auth)
    assert resp.status == 200, await resp.text()
    codes = (await resp.json())["recovery_codes"]
    clock.advance(30)  # the confirming code's step is used up
    return secret, codes


async def start_two_step(client: Client, **extra: Any) -> str:
    resp = await password_login(client, **extra)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["mfa_required"] is True
    return str(body["mfa_token"])


async def second_step(client: Client, token: str, **fields: Any) -> ClientResponse:
    return await client.post("/auth/login/mfa", json={"mfa_token": token, **fields}, headers=origin(client))


async def user_sessions(client: Client) -> list[Any]:
    app = client.server.app
    user = await app[SESSIONS].get_user(EMAIL)
    return await app[SESSIONS].list_sessions(user.id)


# -- enrolment ---------------------------------------------------------------------------------


async def test_totp_enroll_without_token_is_401(gw: Client) -> None:
    resp = await gw.post("/auth/mfa/totp/enroll")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


async def test_totp_enroll_answers_secret_uri_and_qr(gw: Client) -> None:
    resp = await gw.post("/auth/mfa/totp/enroll", headers=await bearer(gw))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert len(body["secret"]) == 32
    assert body["otpauth_uri"].startswith("otpauth://totp/Gateway:alice%40example.com?secret=" + body["secret"])
    assert "issuer=Gateway" in body["otpauth_uri"]
    assert body["qr_svg"].startswith("data:image/svg+xml")


async def test_totp_confirm_wrong_code_is_403_and_totp_stays_off(gw: Client, clock: FakeClock) -> None:
    auth = await bearer(gw)
    secret = (await (await gw.post("/auth/mfa/totp/enroll", headers=auth)).json())["secret"]
    wrong = f"{(int(code_at(secret, clock)) + 1) % 1_000_000:06d}"
    resp = await gw.post("/auth/mfa/totp/confirm", json={"code": wrong}, headers=auth)
    assert resp.status == 403
    assert (await resp.json())["error"] == "invalid_mfa_code"
    status = await (await gw.get("/auth/mfa", headers=auth)).json()
    assert status["totp"] is False and status["totp_pending"] is True
    assert (await (await password_login(gw)).json()).get("mfa_required") is None


async def test_totp_confirm_gives_ten_distinct_recovery_codes_and_turns_totp_on(gw: Client, clock: FakeClock) -> None:
    _, codes = await enable_totp(gw, clock)
    assert len(codes) == 10 and len(set(codes)) == 10
    status = await (await gw.get("/auth/mfa", headers=await bearer_mfa(gw, clock))).json()
    assert status["totp"] is True and status["recovery_codes_left"] == 10


async def test_totp_enroll_while_on_is_409(gw: Client, clock: FakeClock) -> None:
    await enable_totp(gw, clock)
    resp = await gw.post("/auth/mfa/totp/enroll", headers=await bearer_mfa(gw, clock))
    assert resp.status == 409
    assert (await resp.json())["error"] == "mfa_state"


async def test_totp_confirm_without_enrolment_is_409(gw: Client) -> None:
    resp = await gw.post("/auth/mfa/totp/confirm", json={"code": "123456"}, headers=await bearer(gw))
    assert resp.status == 409


async def test_totp_secret_is_stored_encrypted(
    make_gateway: MakeGateway, make_config: MakeConfig, tmp_path: Path
) -> None:
    gw = await make_gateway(make_config())
    await gw.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    secret = (await (await gw.post("/auth/mfa/totp/enroll", headers=await bearer(gw))).json())["secret"]
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        ((stored, user_id),) = db.execute("SELECT secret, user_id FROM mfa_totp").fetchall()
    assert secret not in stored and stored.startswith("v1.")
    box = gw.server.app[MFA].box
    assert box.open(stored, user_id=user_id) == secret
    with pytest.raises(UnreadableSecret):
        box.open(stored, user_id="someone-else")  # the user id is associated data
    cfg = gw.server.app[CONFIG]
    other = SecretBox.from_config(cfg.mfa.__class__(encryption_key="x" * 32), cfg.tokens)
    with pytest.raises(UnreadableSecret):
        other.open(stored, user_id=user_id)


async def test_totp_secret_and_codes_never_reach_a_log(
    gw: Client, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret, codes = await enable_totp(gw, clock)
    token = await start_two_step(gw)
    assert (await second_step(gw, token, recovery_code=codes[0])).status == 200
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "mfa_enrolled" in text
    for value in (secret, codes[0], codes[0].replace("-", ""), token):
        assert value not in text


# -- two-step login ----------------------------------------------------------------------------


async def test_login_with_totp_gives_no_session_and_no_cookie_before_step_two(gw: Client, clock: FakeClock) -> None:
    await enable_totp(gw, clock)
    before = len(await user_sessions(gw))
    resp = await password_login(gw)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"mfa_required", "mfa_token", "methods"}
    assert body["methods"] == ["totp", "recovery_code"]
    assert "Set-Cookie" not in resp.headers
    assert resp.headers["Cache-Control"] == "no-store"
    assert len(await user_sessions(gw)) == before
    # The mfa_token is no access token: the API refuses it.
    assert (await gw.get("/api/whoami", headers={"Authorization": f"Bearer {body['mfa_token']}"})).status == 401


async def test_login_mfa_with_code_answers_as_login_with_otp_amr(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    token = await start_two_step(gw)
    resp = await second_step(gw, token, code=code_at(secret, clock))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert claims(body["access_token"])["amr"] == ["pwd", "otp", "mfa"]
    cookies = resp.headers.getall("Set-Cookie")
    assert any(c.startswith("refresh_token=") and "HttpOnly" in c for c in cookies)
    sessions = await user_sessions(gw)
    assert sessions[0].amr == ("pwd", "otp", "mfa")


async def test_login_mfa_keeps_refresh_in_body_of_step_one(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    token = await start_two_step(gw, refresh_in_body=True, remember_me=True)
    resp = await second_step(gw, token, code=code_at(secret, clock))
    body = await resp.json()
    assert "refresh_token" in body
    assert not any(c.startswith("refresh_token=") for c in resp.headers.getall("Set-Cookie", []))
    refreshed = await gw.post("/auth/refresh-token", json={"refresh_token": body["refresh_token"]})
    assert refreshed.status == 200
    assert claims((await refreshed.json())["access_token"])["amr"] == ["pwd", "otp", "mfa"]
    assert (await user_sessions(gw))[0].remember_me is True


async def test_login_mfa_accepts_adjacent_steps_but_not_two_away(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    clock.advance(60)  # two steps past the confirming code's, so the step before now is unused
    token = await start_two_step(gw)
    assert (await second_step(gw, token, code=code_at(secret, clock, -2))).status == 401
    assert (await second_step(gw, token, code=code_at(secret, clock, +2))).status == 401
    assert (await second_step(gw, token, code=code_at(secret, clock, -1))).status == 200


async def test_login_mfa_code_replay_and_older_step_fail(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    code = code_at(secret, clock)
    assert (await second_step(gw, await start_two_step(gw), code=code)).status == 200
    replay = await second_step(gw, await start_two_step(gw), code=code)
    assert replay.status == 401
    assert (await replay.json())["error"] == "invalid_mfa_code"
    assert replay.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    # The previous step's code is inside the window but older than the one used: refused too.
    assert (await second_step(gw, await start_two_step(gw), code=code_at(secret, clock, -1))).status == 401
    clock.advance(30)
    assert (await second_step(gw, await start_two_step(gw), code=code_at(secret, clock))).status == 200


async def test_login_mfa_concurrent_same_code_only_one_session(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    code = code_at(secret, clock)
    tokens = [await start_two_step(gw) for _ in range(5)]
    before = len(await user_sessions(gw))
    answers = await asyncio.gather(*[second_step(gw, t, code=code) for t in tokens])
    assert sorted(r.status for r in answers) == [200, 401, 401, 401, 401]
    assert len(await user_sessions(gw)) == before + 1


async def test_login_mfa_recovery_code_works_once(gw: Client, clock: FakeClock) -> None:
    _, codes = await enable_totp(gw, clock)
    resp = await second_step(gw, await start_two_step(gw), recovery_code=codes[3].upper())
    assert resp.status == 200
    assert claims((await resp.json())["access_token"])["amr"] == ["pwd", "otp", "mfa"]
    again = await second_step(gw, await start_two_step(gw), recovery_code=codes[3])
    assert again.status == 401
    assert (await again.json())["error"] == "invalid_mfa_code"
    assert (await second_step(gw, await start_two_step(gw), recovery_code=codes[4])).status == 200


async def test_login_mfa_sixth_try_refused_even_with_right_code(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    token = await start_two_step(gw)
    right = code_at(secret, clock)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(5):
        resp = await second_step(gw, token, code=wrong)
        assert (resp.status, (await resp.json())["error"]) == (401, "invalid_mfa_code")
    resp = await second_step(gw, token, code=right)
    assert (resp.status, (await resp.json())["error"]) == (401, "invalid_mfa_token")
    # A fresh password check gives a fresh token and the same right code still works.
    assert (await second_step(gw, await start_two_step(gw), code=right)).status == 200


async def test_login_mfa_concurrent_wrong_tries_are_counted_exactly(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    token = await start_two_step(gw)
    wrong = f"{(int(code_at(secret, clock)) + 1) % 1_000_000:06d}"
    answers = await asyncio.gather(*[second_step(gw, token, code=wrong) for _ in range(20)])
    errors = sorted([(await r.json())["error"] for r in answers])
    # Five wrong codes count against the account, not just the token, but stay under its limit.
    assert errors.count("invalid_mfa_code") == 5
    assert errors.count("invalid_mfa_token") == 15


async def test_login_mfa_fresh_tokens_do_not_reset_the_guess_limit(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    right = code_at(secret, clock)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(2):  # two password checks, five wrong codes each: the account's limit of ten
        token = await start_two_step(gw)
        for _ in range(5):
            assert (await second_step(gw, token, code=wrong)).status == 401
    resp = await second_step(gw, await start_two_step(gw), code=right)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    clock.advance(901)
    assert (await second_step(gw, await start_two_step(gw), code=code_at(secret, clock))).status == 200


async def test_login_mfa_token_expires_after_five_minutes(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    token = await start_two_step(gw)
    clock.advance(301)
    resp = await second_step(gw, token, code=code_at(secret, clock))
    assert (resp.status, (await resp.json())["error"]) == (401, "invalid_mfa_token")


async def test_login_mfa_token_is_single_use(gw: Client, clock: FakeClock) -> None:
    secret, codes = await enable_totp(gw, clock)
    token = await start_two_step(gw)
    assert (await second_step(gw, token, code=code_at(secret, clock))).status == 200
    resp = await second_step(gw, token, recovery_code=codes[0])
    assert (resp.status, (await resp.json())["error"]) == (401, "invalid_mfa_token")


async def test_login_mfa_unknown_token_and_bad_bodies(gw: Client, clock: FakeClock) -> None:
    await enable_totp(gw, clock)
    assert (await second_step(gw, "not-a-token", code="123456")).status == 401
    assert (await second_step(gw, "x")).status == 400  # neither code nor recovery_code
    assert (await second_step(gw, "x", code="1", recovery_code="2")).status == 400
    foreign = await gw.post(
        "/auth/login/mfa", json={"mfa_token": "x", "code": "1"}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status == 403


async def test_login_mfa_non_ascii_digits_are_a_wrong_code_not_a_crash(gw: Client, clock: FakeClock) -> None:
    await enable_totp(gw, clock)
    for code in ("１２３４５６", "123456\n", "٣٣٣٣٣٣"):
        resp = await second_step(gw, await start_two_step(gw), code=code)
        assert (resp.status, (await resp.json())["error"]) == (401, "invalid_mfa_code")


async def test_login_without_second_factor_is_unchanged(gw: Client) -> None:
    resp = await password_login(gw)
    assert resp.status == 200
    assert claims((await resp.json())["access_token"])["amr"] == ["pwd"]


# -- disable and regenerate --------------------------------------------------------------------


async def bearer_mfa(client: Client, clock: FakeClock) -> dict[str, str]:
    """An Authorization header of a session made with a recovery-free TOTP login (moves the clock a step)."""
    app = client.server.app
    user = await app[SESSIONS].get_user(EMAIL)
    record = await app[MFA].store.totp_get(user.id)
    secret = app[MFA].box.open(record.secret, user_id=user.id)
    clock.advance(30)
    resp = await second_step(client, await start_two_step(client, refresh_in_body=True), code=code_at(secret, clock))
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


async def test_totp_disable_needs_a_current_code_then_login_is_one_step(gw: Client, clock: FakeClock) -> None:
    secret, codes = await enable_totp(gw, clock)
    auth = await bearer_mfa(gw, clock)
    clock.advance(30)
    resp = await gw.request("DELETE", "/auth/mfa/totp", json={"code": "000000"}, headers=auth)
    assert resp.status == 403
    resp = await gw.request("DELETE", "/auth/mfa/totp", json={"code": code_at(secret, clock)}, headers=auth)
    assert resp.status == 204
    assert (await (await password_login(gw)).json()).get("mfa_required") is None
    # The session TOTP opened ended with it: it passed mfa = true routes on a factor now gone
    # (before this stop it did so for its whole life). Revocation bites at once.
    assert (await gw.get("/auth/mfa", headers=auth)).status == 401
    fresh = await bearer(gw)
    status = await (await gw.get("/auth/mfa", headers=fresh)).json()
    assert status == {"totp": False, "totp_pending": False, "recovery_codes_left": 0, "passkeys": 0, "amr": ["pwd"]}



async def test_recovery_codes_regenerate_voids_the_old_ones(gw: Client, clock: FakeClock) -> None:
    secret, old = await enable_totp(gw, clock)
    auth = await bearer_mfa(gw, clock)
    clock.advance(30)
    resp = await gw.post("/auth/mfa/recovery-codes", json={"code": code_at(secret, clock)}, headers=auth)
    assert resp.status == 200
    new = (await resp.json())["recovery_codes"]
    assert len(new) == 10 and not set(new) & set(old)
    assert (await second_step(gw, await start_two_step(gw), recovery_code=old[0])).status == 401
    assert (await second_step(gw, await start_two_step(gw), recovery_code=new[0])).status == 200


async def test_authenticated_code_guessing_is_rate_limited(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    auth = await bearer_mfa(gw, clock)
    clock.advance(30)
    wrong = f"{(int(code_at(secret, clock)) + 1) % 1_000_000:06d}"
    statuses = [
        (await gw.request("DELETE", "/auth/mfa/totp", json={"code": wrong}, headers=auth)).status for _ in range(6)
    ]
    assert statuses == [403] * 5 + [429]
    resp = await gw.request("DELETE", "/auth/mfa/totp", json={"code": code_at(secret, clock)}, headers=auth)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0


# -- reset, metrics ----------------------------------------------------------------------------


async def test_mfa_reset_removes_factors_and_revokes_sessions(gw: Client, clock: FakeClock) -> None:
    await enable_totp(gw, clock)
    auth = await bearer_mfa(gw, clock)
    assert (await gw.get("/api/whoami", headers=auth)).status == 200
    revoked = await gw.server.app[MFA].reset(EMAIL)
    assert revoked
    assert (await gw.get("/api/whoami", headers=auth)).status == 401
    assert await user_sessions(gw) == []
    assert (await (await password_login(gw)).json()).get("mfa_required") is None


async def test_metrics_count_enrolments_failures_and_resets(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    await second_step(gw, await start_two_step(gw), code="000000")
    await gw.server.app[MFA].reset(EMAIL)
    text = await (await gw.get("/metrics")).text()
    assert 'gateway_mfa_events_total{event="mfa_enrolled",method="totp"} 1.0' in text
    assert 'gateway_mfa_events_total{event="mfa_failure",method="totp"} 1.0' in text
    assert 'gateway_mfa_events_total{event="mfa_reset",method="all"} 1.0' in text


# -- what voids a pending mfa_token, and malformed second steps (issue 19) ----------------------


async def test_mfa_token_is_void_after_a_password_change(gw: Client, clock: FakeClock) -> None:
    # Before this stop the pending token lived out its five minutes after the password changed.
    secret, _ = await enable_totp(gw, clock)
    token = await start_two_step(gw)  # the thief has the old password and a pending token
    owner = await second_step(gw, await start_two_step(gw), code=code_at(secret, clock))
    assert owner.status == 200
    change = await gw.post(
        "/auth/password/change", json={"current_password": PASSWORD, "password": "a brand new passphrase"},
        headers=origin(gw),
    )  # fmt: skip
    assert change.status == 204, await change.text()
    clock.advance(30)
    resp = await second_step(gw, token, code=code_at(secret, clock))
    assert (resp.status, (await resp.json())["error"]) == (401, "invalid_mfa_token")


async def test_mfa_token_is_void_after_an_admin_password_reset(gw: Client, clock: FakeClock) -> None:
    secret, _ = await enable_totp(gw, clock)
    token = await start_two_step(gw)
    await gw.server.app[SESSIONS].set_password(EMAIL, "set by the operator")
    resp = await second_step(gw, token, code=code_at(secret, clock))
    assert (resp.status, (await resp.json())["error"]) == (401, "invalid_mfa_token")


@pytest.mark.parametrize(
    "fields",
    [{"mfa_token": 12345, "code": "123456"}, {"mfa_token": None, "code": "123456"}, {"code": ["123456"]},
     {"code": 123456}, {"recovery_code": {"a": 1}}, {"recovery_code": ["x"]}],
)  # fmt: skip
async def test_login_mfa_fields_of_the_wrong_json_type_are_400(gw: Client, clock: FakeClock, fields: dict[str, Any]) -> None:
    # Before this stop these answered 401 (invalid_mfa_token / invalid_mfa_code) and counted a try.
    await enable_totp(gw, clock)
    token = await start_two_step(gw)
    resp = await gw.post("/auth/login/mfa", json={"mfa_token": token, **fields}, headers=origin(gw))
    assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")


async def test_passkey_login_options_look_the_same_for_every_email(gw: Client) -> None:
    # Before this stop a known email's options listed its passkeys' credential ids, an unknown one none.
    app = gw.server.app
    user = await app[SESSIONS].get_user(EMAIL)
    await app[PASSKEYS].store.passkey_add(PasskeyRecord(
        id="pk-1", user_id=user.id, credential_id="Y3JlZC0x", public_key="pQECAyYgASFYIA", sign_count=0,
        name="laptop", transports=("internal",), created_at=0.0,
    ))  # fmt: skip
    answers = []
    for body in ({"email": EMAIL}, {"email": "nobody@example.com"}, {}):
        resp = await gw.post("/auth/passkeys/login/options", json=body, headers=origin(gw))
        assert resp.status == 200, await resp.text()
        answers.append(await resp.json())
    shapes = [{k: v for k, v in a.items() if k != "challenge"} for a in answers]
    assert shapes[0] == shapes[1] == shapes[2]
    assert answers[0].get("allowCredentials", []) == []
    assert len({a["challenge"] for a in answers}) == 3
    bad = await gw.post("/auth/passkeys/login/options", json={"email": "a@corp.com,b@evil.com"}, headers=origin(gw))
    assert (bad.status, (await bad.json())["error"]) == (400, "invalid_request")
