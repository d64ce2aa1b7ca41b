"""Self-service accounts over HTTP, with mail read from a real SMTP server (tests/smtp_server.py).

Covers the SPEC table of "Accounts (self-service)": sign-up, verification, resend, forgot, reset,
change, the two GET pages, require_verified_email, and the attacks on them (replay, expiry, older
token after a newer one, enumeration by body, status and time, header injection, the email limit).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from gateway.accounts.mail import render_mail
from gateway.http.keys import SESSIONS
from tests.conftest import MakeConfig, MakeGateway
from tests.mailbox import Mailbox, link_token
from tests.support import FakeClock, free_port

Client = TestClient[Any, Any]

EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Mailbox]:
    """A running test SMTP server process; stopped at the end."""
    box = Mailbox(tmp_path / "mail", free_port())
    box.maildir.mkdir()
    box.start()
    try:
        yield box
    finally:
        box.stop()


async def _gateway(make_gateway: MakeGateway, make_config: MakeConfig, box: Mailbox, **accounts: Any) -> Client:
    tables: dict[str, Any] = {
        "accounts": {"signup": True, "link_base": "https://app.example.com", **accounts},
        "email": {"smtp_url": box.url, "from": "Gateway <no-reply@example.com>"},
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
    }
    return await make_gateway(make_config(**tables))


async def _login(client: Client, email: str = EMAIL, password: str = PASSWORD) -> Any:
    """A non-browser login; the cookie jar is emptied so later calls carry no cookies."""
    client.session.cookie_jar.clear()
    resp = await client.post("/auth/login", json={"email": email, "password": password, "refresh_in_body": True})
    await resp.read()
    client.session.cookie_jar.clear()
    return resp


async def _whoami(client: Client, access: str) -> int:
    resp = await client.get("/api/whoami", headers={"Authorization": f"Bearer {access}"})
    return resp.status


# -- sign-up and verification ----------------------------------------------------------------


async def test_signup_off_is_404(make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox) -> None:
    client = await _gateway(make_gateway, make_config, mailbox, signup=False)
    resp = await client.post("/auth/signup", json={"email": EMAIL, "password": PASSWORD})
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_signup_mail_page_verify_then_login(make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox) -> None:
    client = await _gateway(make_gateway, make_config, mailbox, require_verified_email=True)
    resp = await client.post("/auth/signup", json={"email": EMAIL, "password": PASSWORD})
    assert resp.status == 202
    assert await resp.json() == {"status": "pending"}
    (mail,) = await mailbox.wait_for(1, address=EMAIL)
    assert mail["Subject"] == "Confirm your email address"
    assert mail["From"] == "Gateway <no-reply@example.com>"
    body = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "https://app.example.com/auth/verify-email?token=" in body
    token = link_token(mail, "verify-email")
    # unverified: the right password answers 403, a wrong one still 401
    resp = await _login(client)
    assert resp.status == 403 and (await resp.json())["error"] == "email_not_verified"
    assert (await _login(client, password="wrong password!")).status == 401
    # the page (as a mail scanner would fetch it, twice) only shows a form: the token stays unused
    for _ in range(2):
        page = await client.get(f"/auth/verify-email?token={token}")
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
        assert 'method="post"' in html and f'value="{token}"' in html and "<button" in html
        assert page.headers["Referrer-Policy"] == "same-origin"
        assert page.headers["Cache-Control"] == "no-store"
    resp = await client.post("/auth/verify-email", json={"token": token})
    assert resp.status == 204
    assert (await _login(client)).status == 200
    replay = await client.post("/auth/verify-email", json={"token": token})
    assert replay.status == 400 and (await replay.json())["error"] == "invalid_email_token"


async def test_verify_page_form_post_answers_a_page(make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    await client.post("/auth/signup", json={"email": EMAIL, "password": PASSWORD})
    token = link_token((await mailbox.wait_for(1))[0], "verify-email")
    origin = f"http://127.0.0.1:{client.port}"
    headers = {"Accept": "text/html", "Origin": origin}
    resp = await client.post("/auth/verify-email", data={"token": token}, headers=headers)
    assert resp.status == 200 and "verified" in await resp.text()
    resp = await client.post("/auth/verify-email", data={"token": token}, headers=headers)
    assert resp.status == 400 and resp.content_type == "text/html"
    foreign = await client.post("/auth/verify-email", data={"token": token}, headers={"Origin": "https://evil.example"})
    assert foreign.status == 403


async def test_signup_and_forgot_follow_logins_csrf_rule(make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox) -> None:
    """One rule for every POST without an access token: a client sending someone else's cookie (a load
    balancer's, say) and no Origin is not a browser to guard; the gateway's own cookie or a foreign
    Origin is."""
    client = await _gateway(make_gateway, make_config, mailbox)
    lb = {"Cookie": "lb_affinity=node-2"}
    assert (await client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD}, headers=lb)).status == 401
    assert (await client.post("/auth/signup", json={"email": EMAIL, "password": PASSWORD}, headers=lb)).status == 202
    assert (await client.post("/auth/password/forgot", json={"email": EMAIL}, headers=lb)).status == 202
    for refused in ({"Cookie": "refresh_token=stolen"}, {"Origin": "https://evil.example"}):
        for path, body in (("/auth/signup", {"email": "b@example.com", "password": PASSWORD}), ("/auth/password/forgot", {"email": EMAIL})):
            resp = await client.post(path, json=body, headers=refused)
            assert (resp.status, (await resp.json())["error"]) == (403, "csrf_failed"), (path, refused)


async def test_signup_existing_address_looks_the_same_and_mails_the_owner(
    make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox
) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    new = await client.post("/auth/signup", json={"email": "new@example.com", "password": PASSWORD})
    old = await client.post("/auth/signup", json={"email": " ALICE@example.com ", "password": "attacker password"})
    assert (new.status, await new.json()) == (old.status, await old.json()) == (202, {"status": "pending"})
    assert set(new.headers) - {"Date", "X-Request-Id"} == set(old.headers) - {"Date", "X-Request-Id"}
    (exists,) = await mailbox.wait_for(1, address=EMAIL)
    assert exists["Subject"] == "You already have an account"
    assert "token=" not in exists.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    await mailbox.wait_for(1, address="new@example.com")
    assert (await _login(client)).status == 200  # the password was not changed
    assert (await _login(client, password="attacker password")).status == 401


async def test_resend_voids_the_older_verification_token(make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    await client.post("/auth/signup", json={"email": EMAIL, "password": PASSWORD})
    first = link_token((await mailbox.wait_for(1))[0], "verify-email")
    resp = await client.post("/auth/verify-email/resend", json={"email": EMAIL})
    assert resp.status == 202
    second = link_token((await mailbox.wait_for(2))[1], "verify-email")
    assert first != second
    assert (await client.post("/auth/verify-email", json={"token": first})).status == 400
    assert (await client.post("/auth/verify-email", json={"token": second})).status == 204
    # verified now: a resend sends nothing
    await client.post("/auth/verify-email/resend", json={"email": EMAIL})
    await client.post("/auth/verify-email/resend", json={"email": "nobody@example.com"})
    await asyncio.sleep(1.5)
    assert len(mailbox.messages()) == 2


# -- forgot and reset ------------------------------------------------------------------------


async def test_forgot_reset_revokes_sessions_and_token_is_single_use(
    make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox
) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    access = (await (await _login(client)).json())["access_token"]
    assert await _whoami(client, access) == 200
    resp = await client.post("/auth/password/forgot", json={"email": EMAIL})
    assert resp.status == 202
    (mail,) = await mailbox.wait_for(1, address=EMAIL)
    assert mail["Subject"] == "Reset your password"
    token = link_token(mail, "reset-password")
    page = await client.get(f"/auth/reset-password?token={token}")
    assert page.status == 200 and 'type="password"' in await page.text()
    bad = await client.post("/auth/password/reset", json={"token": token, "password": "short"})
    assert bad.status == 400 and (await bad.json())["error"] == "invalid_request"
    resp = await client.post("/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
    assert resp.status == 204
    assert await _whoami(client, access) == 401  # every session revoked
    assert (await _login(client)).status == 401
    assert (await _login(client, password=NEW_PASSWORD)).status == 200
    replay = await client.post("/auth/password/reset", json={"token": token, "password": "yet another password"})
    assert replay.status == 400 and (await replay.json())["error"] == "invalid_email_token"


async def test_reset_older_token_after_newer_is_refused(make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    await client.post("/auth/password/forgot", json={"email": EMAIL})
    older = link_token((await mailbox.wait_for(1))[0], "reset-password")
    await client.post("/auth/password/forgot", json={"email": EMAIL})
    newer = link_token((await mailbox.wait_for(2))[1], "reset-password")
    resp = await client.post("/auth/password/reset", json={"token": older, "password": NEW_PASSWORD})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_email_token"
    assert (await client.post("/auth/password/reset", json={"token": newer, "password": NEW_PASSWORD})).status == 204


async def test_reset_expired_token_is_refused(
    make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox, clock: FakeClock
) -> None:
    client = await _gateway(make_gateway, make_config, mailbox, reset_ttl="10m")
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    await client.post("/auth/password/forgot", json={"email": EMAIL})
    token = link_token((await mailbox.wait_for(1))[0], "reset-password")
    clock.advance(601)
    resp = await client.post("/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_email_token"
    assert (await _login(client)).status == 200


async def test_reset_forged_token_is_refused(make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    for token in ("A" * 43, "", 5, "x" * 5000):
        resp = await client.post("/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
        assert resp.status == 400


async def test_forgot_unknown_disabled_and_real_answer_alike_and_only_real_gets_mail(
    make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox
) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    service = client.server.app[SESSIONS]
    await service.add_user(EMAIL, PASSWORD)
    await service.add_user("off@example.com", PASSWORD)
    await service.set_disabled("off@example.com", disabled=True)
    times: dict[str, list[float]] = {EMAIL: [], "off@example.com": [], "nobody@example.com": []}
    answers = set()
    for i in range(4):  # interleaved, each from its own address so the email limit stays out of it
        for address, spent in times.items():
            started = time.perf_counter()
            resp = await client.post(
                "/auth/password/forgot", json={"email": address}, headers={"X-Forwarded-For": f"203.0.113.{i}"}
            )
            spent.append(time.perf_counter() - started)
            answers.add((resp.status, await resp.text(), resp.headers["Content-Type"], resp.headers["Cache-Control"]))
    assert len(answers) == 1 and next(iter(answers))[0] == 202
    medians = [statistics.median(v) for v in times.values()]
    # the same work in the request whatever the address (the lookup and the mail run afterwards)
    assert max(medians) - min(medians) < 0.05, medians
    await mailbox.wait_for(4, address=EMAIL)
    await asyncio.sleep(1.0)
    assert {m["X-Envelope-To"] for m in mailbox.messages()} == {EMAIL}


async def test_email_limit_per_address_and_per_client(make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox) -> None:
    cfg = make_config(
        accounts={"link_base": "https://app.example.com"},
        email={"smtp_url": mailbox.url},
        limits={"email": "2/hour"},
        server={"trusted_proxies": ["127.0.0.1/32"]},
    )
    client = await make_gateway(cfg)

    async def forgot(address: str, ip: str) -> Any:
        return await client.post("/auth/password/forgot", json={"email": address}, headers={"X-Forwarded-For": ip})

    assert [(await forgot(EMAIL, f"198.51.100.{i}")).status for i in range(3)] == [202, 202, 429]
    limited = await forgot(EMAIL, "198.51.100.9")
    assert (await limited.json())["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert [(await forgot(f"u{i}@example.com", "203.0.113.7")).status for i in range(3)] == [202, 202, 429]


async def test_header_injection_in_address_is_refused_and_sends_nothing(
    make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox
) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    for evil in ("victim@example.com\r\nBcc: attacker@evil.example", "victim@example.com\nSubject: hi", "a\r\n@example.com"):
        for path, body in (
            ("/auth/signup", {"email": evil, "password": PASSWORD}),
            ("/auth/password/forgot", {"email": evil}),
            ("/auth/verify-email/resend", {"email": evil}),
        ):
            resp = await client.post(path, json=body)
            assert resp.status == 400, (path, evil)
    await asyncio.sleep(1.0)
    assert mailbox.messages() == []


def test_render_mail_refuses_cr_lf_in_any_header_value() -> None:
    with pytest.raises(ValueError):
        render_mail("verify", sender="G <g@example.com>", to="v@example.com\r\nBcc: a@evil.example", link="https://x/")
    with pytest.raises(ValueError):
        render_mail("verify", sender="Evil\r\nBcc: a@evil.example <g@example.com>", to="v@example.com", link="https://x/")


# -- change ----------------------------------------------------------------------------------


async def test_change_password_keeps_this_session_revokes_others(
    make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox
) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    mine = await (await _login(client)).json()
    other = await (await _login(client)).json()
    auth = {"Authorization": f"Bearer {mine['access_token']}"}
    wrong = await client.post(
        "/auth/password/change", json={"current_password": "not my password", "password": NEW_PASSWORD}, headers=auth
    )
    assert wrong.status == 403 and (await wrong.json())["error"] == "invalid_credentials"
    anon = await client.post("/auth/password/change", json={"current_password": PASSWORD, "password": NEW_PASSWORD})
    assert anon.status == 401
    resp = await client.post("/auth/password/change", json={"current_password": PASSWORD, "password": NEW_PASSWORD}, headers=auth)
    assert resp.status == 204
    assert await _whoami(client, mine["access_token"]) == 200
    assert await _whoami(client, other["access_token"]) == 401
    assert (await client.post("/auth/refresh-token", json={"refresh_token": other["refresh_token"]})).status == 403
    assert (await client.post("/auth/refresh-token", json={"refresh_token": mine["refresh_token"]})).status == 200
    assert (await _login(client, password=NEW_PASSWORD)).status == 200


async def test_reset_closes_the_users_proxied_websocket_within_a_second(
    make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox
) -> None:
    client = await _gateway(make_gateway, make_config, mailbox)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    access = (await (await _login(client)).json())["access_token"]
    async with client.session.ws_connect(client.make_url("/api/ws"), headers={"Authorization": f"Bearer {access}"}) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "hi"
        await client.post("/auth/password/forgot", json={"email": EMAIL})
        token = link_token((await mailbox.wait_for(1))[0], "reset-password")
        resp = await client.post("/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
        assert resp.status == 204
        started = time.monotonic()
        msg = await ws.receive(timeout=5)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert time.monotonic() - started < 1.0


# -- one address at every door (issue 19: two-address emails) ----------------------------------


@pytest.mark.parametrize("address", ["attacker@evil.com,ceo@corp.com", "mallory@evil.com.", "a@corp.com;b@evil.com"])
async def test_an_address_that_is_not_one_address_is_refused_at_every_door(
    make_gateway: MakeGateway, make_config: MakeConfig, mailbox: Mailbox, address: str
) -> None:
    """Before this stop each of these was one "address": policy read its domain as corp.com (or
    evil.com. past a deny of evil.com) while the mail went to the attacker's own box."""
    client = await _gateway(make_gateway, make_config, mailbox)
    await client.app[SESSIONS].add_user(EMAIL, PASSWORD)
    doors = [
        ("/auth/signup", {"email": address, "password": PASSWORD}),
        ("/auth/login", {"email": address, "password": PASSWORD}),
        ("/auth/password/forgot", {"email": address}),
        ("/auth/verify-email/resend", {"email": address}),
    ]
    for path, body in doors:
        resp = await client.post(path, json=body)
        assert resp.status == 400, (path, resp.status)
        assert (await resp.json())["error"] == "invalid_request", path
    await asyncio.sleep(0.3)  # anything queued would be on its way by now
    assert mailbox.messages() == []
    assert [u.email for u in await client.app[SESSIONS].store.list_users()] == [EMAIL]
