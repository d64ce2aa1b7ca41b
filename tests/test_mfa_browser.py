"""Passkeys and TOTP end to end in headless Chromium, through the demo page and /auth/client.js.

The authenticator is Chromium's own virtual one (CDP `WebAuthn.addVirtualAuthenticator`: ctap2,
internal transport, resident keys, user verification that succeeds), so the browser really runs
navigator.credentials.create()/get() and signs with a key the test never sees. WebAuthn needs a
secure context and a domain as RP id: the page is served at http://localhost:PORT (Chromium treats
localhost as secure) with `webauthn.rp_id = "localhost"`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pyotp
import pytest
from aiohttp.test_utils import TestClient

from gateway.http.keys import SESSIONS
from gateway.mfa.keys import MFA
from tests.conftest import MakeConfig, MakeGateway
from tests.support import FakeClock, chromium

Client = TestClient[Any, Any]

# localhost could resolve to ::1 first, where the test server does not listen.
LOCALHOST_IS_IPV4 = "--host-resolver-rules=MAP localhost 127.0.0.1"
EMAIL = "demo@example.com"  # the demo page's pre-filled email
PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 15_000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium(LOCALHOST_IS_IPV4) as b:
        yield b


@pytest.fixture
async def gw(make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str) -> Client:
    cfg = make_config(
        webauthn={"rp_id": "localhost", "rp_name": "Gateway tests"},
        routes=[
            {"prefix": "/api", "upstream": upstream_url, "auth": "required", "timeout": "5s"},
            # The demo page's "Call an MFA-only route" button: /secure/whoami is the upstream's /api/whoami.
            {"prefix": "/secure", "upstream": upstream_url + "/api", "auth": "required", "strip_prefix": True,
             "allow": [{"mfa": True}]},
            {"prefix": "/", "upstream": upstream_url, "auth": "public"},
        ],
    )
    client = await make_gateway(cfg)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    return client


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO, logger="gateway.audit")

    def events(event: str) -> list[dict[str, Any]]:
        return [r.fields for r in caplog.records if r.name == "gateway.audit" and r.fields["event"] == event]  # type: ignore[attr-defined]

    return events


class Tab:
    """One page on the demo with its own virtual authenticator."""

    def __init__(self, page: Any, cdp: Any, authenticator_id: str) -> None:
        self.page, self.cdp, self.authenticator_id = page, cdp, authenticator_id

    async def js(self, expression: str, arg: Any = None) -> Any:
        return await self.page.evaluate(expression, arg)

    async def credentials(self) -> list[dict[str, Any]]:
        got = await self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id})
        return list(got["credentials"])


async def open_tab(browser: Any, gw: Client) -> Tab:
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    added = await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {"options": {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                     "hasUserVerification": True, "isUserVerified": True, "automaticPresenceSimulation": True}},
    )  # fmt: skip
    await page.goto(f"http://localhost:{gw.server.port}/")
    await page.wait_for_function("window.demoReady !== undefined")
    await page.evaluate("window.demoReady")
    return Tab(page, cdp, added["authenticatorId"])


async def password_login(tab: Tab) -> dict[str, Any]:
    return dict(await tab.js("([e, p]) => window.demoAuth.login(e, p)", [EMAIL, PASSWORD]))


async def passkey_login(tab: Tab, tamper: str = "") -> dict[str, Any]:
    """loginWithPasskey() in the page; {ok, body} or {ok: false, status, code}."""
    return dict(await tab.js(
        """async (tamper) => {
            const opts = tamper ? { tamper: new Function('pk', tamper) } : {};
            try { return { ok: true, body: await window.demoAuth.loginWithPasskey(opts) }; }
            catch (e) { return { ok: false, status: e.status, code: e.code, message: String(e.message) }; }
        }""",
        tamper,
    ))  # fmt: skip


async def register(tab: Tab) -> str:
    result = await tab.js("() => window.demoAuth.registerPasskey({ name: 'virtual' })")
    return str(result["id"])


async def live_sessions(gw: Client) -> int:
    user = await gw.server.app[SESSIONS].get_user(EMAIL)
    return len(await gw.server.app[SESSIONS].list_sessions(user.id))


async def test_passkey_register_then_passwordless_login(browser: Any, gw: Client, audit: Any) -> None:
    tab = await open_tab(browser, gw)
    await password_login(tab)
    passkey_id = await register(tab)
    listed = await tab.js("() => window.demoAuth.mfa.passkeys()")
    assert [p["id"] for p in listed] == [passkey_id] and listed[0]["name"] == "virtual"
    creds = await tab.credentials()
    assert len(creds) == 1 and creds[0]["isResidentCredential"] is True and creds[0]["rpId"] == "localhost"
    await tab.js("() => window.demoAuth.logout()")
    # The demo page's own button: discoverable credential, no email typed.
    await tab.page.click("#passkey-login")
    await tab.page.wait_for_function("document.getElementById('status').textContent.includes('with a passkey')")
    assert await tab.js("() => window.demoWhoami()") == 200
    result = await passkey_login(tab)
    assert result["ok"], result
    assert jwt.decode(result["body"]["access_token"], options={"verify_signature": False})["amr"] == [
        "hwk",
        "user",
        "mfa",
    ]
    assert len(audit("mfa_enrolled")) == 1 and len(audit("mfa_verified")) == 2
    text = await (await gw.get("/metrics")).text()
    assert 'gateway_mfa_events_total{event="mfa_enrolled",method="passkey"} 1.0' in text


async def test_passkey_login_with_tampered_challenge_is_refused(browser: Any, gw: Client, audit: Any) -> None:
    tab = await open_tab(browser, gw)
    await password_login(tab)
    await register(tab)
    await tab.js("() => window.demoAuth.logout()")
    before = await live_sessions(gw)
    flipped = "const b = new Uint8Array(pk.challenge); b[0] ^= 1; pk.challenge = b.buffer;"
    result = await passkey_login(tab, flipped)
    assert (result["ok"], result["status"], result["code"]) == (False, 401, "invalid_passkey")
    assert await live_sessions(gw) == before
    assert audit("mfa_failure")[-1]["reason"] == "unknown_challenge"
    # The real options still work afterwards: the refused attempt used nothing up.
    assert (await passkey_login(tab))["ok"]


async def test_passkey_login_with_unregistered_credential_is_refused(browser: Any, gw: Client, audit: Any) -> None:
    tab = await open_tab(browser, gw)
    await password_login(tab)
    passkey_id = await register(tab)
    # The server forgets the passkey; the authenticator still holds it.
    assert await tab.js("(id) => window.demoAuth.mfa.deletePasskey(id)", passkey_id) is None
    assert len(await tab.credentials()) == 1
    await tab.js("() => window.demoAuth.logout()")
    result = await passkey_login(tab)
    assert (result["ok"], result["status"], result["code"]) == (False, 401, "invalid_passkey")
    assert audit("mfa_failure")[-1]["reason"] == "unknown_credential"


async def test_passkey_sign_count_going_backwards_is_refused(browser: Any, gw: Client, audit: Any) -> None:
    tab = await open_tab(browser, gw)
    await password_login(tab)
    await register(tab)
    for _ in range(2):
        assert (await passkey_login(tab))["ok"]
    (cred,) = await tab.credentials()
    assert cred["signCount"] >= 2
    # A clone of the authenticator taken earlier: same key, a smaller counter.
    await tab.cdp.send(
        "WebAuthn.removeCredential", {"authenticatorId": tab.authenticator_id, "credentialId": cred["credentialId"]}
    )
    await tab.cdp.send(
        "WebAuthn.addCredential", {"authenticatorId": tab.authenticator_id, "credential": {**cred, "signCount": 0}}
    )
    result = await passkey_login(tab)
    assert (result["ok"], result["status"], result["code"]) == (False, 401, "invalid_passkey")
    assert audit("mfa_failure")[-1]["reason"] == "sign_count"


async def test_passkey_register_without_login_is_401(browser: Any, gw: Client) -> None:
    tab = await open_tab(browser, gw)
    result = await tab.js(
        "() => window.demoAuth.registerPasskey().then(() => 'registered', (e) => `${e.status} ${e.code}`)"
    )
    assert result == "401 missing_token"


async def test_demo_page_totp_enrol_confirm_and_two_step_login(browser: Any, gw: Client, clock: FakeClock) -> None:
    tab = await open_tab(browser, gw)
    page = tab.page
    await page.fill("#password", PASSWORD)
    await page.click("#login-button")
    await page.wait_for_selector("#app-section:not([hidden])")
    await page.click("#totp-enroll")
    await page.wait_for_selector("#totp-setup:not([hidden])")
    secret = await page.text_content("#totp-secret")
    assert secret and (await page.get_attribute("#totp-qr", "src") or "").startswith("data:image/svg+xml")
    await page.fill("#totp-code", pyotp.TOTP(secret).at(int(clock.now)))
    await page.click("#totp-confirm")
    await page.wait_for_selector("#recovery-codes:not([hidden])")
    codes = (await page.text_content("#recovery-codes") or "").splitlines()[1:]
    assert len(codes) == 10
    await page.click("#logout")
    await page.wait_for_selector("#login-section:not([hidden])")
    clock.advance(30)
    await page.fill("#password", PASSWORD)
    await page.click("#login-button")
    await page.wait_for_selector("#mfa-form:not([hidden])")
    assert await tab.js("() => window.demoAuth.authenticated") is False
    await page.fill("#mfa-code", pyotp.TOTP(secret).at(int(clock.now)))
    await page.click("#mfa-verify")
    await page.wait_for_function("document.getElementById('status').textContent.includes('second factor')")
    assert await tab.js("() => window.demoWhoami()") == 200
    status = await tab.js("() => window.demoAuth.mfa.status()")
    assert status["totp"] is True and status["amr"] == ["pwd", "otp", "mfa"]
    user = await gw.server.app[SESSIONS].get_user(EMAIL)
    assert (await gw.server.app[MFA].store.totp_get(user.id)).confirmed


async def test_demo_page_steps_up_to_a_passkey_for_an_mfa_route(browser: Any, gw: Client) -> None:
    tab = await open_tab(browser, gw)
    page = tab.page
    await page.fill("#password", PASSWORD)
    await page.click("#login-button")
    await page.wait_for_selector("#app-section:not([hidden])")
    await register(tab)
    events = await tab.js(
        """async () => {
            const seen = [];
            window.demoAuth.addEventListener('step-up-required', (e) => seen.push(e.detail.url));
            const res = await window.demoAuth.fetch('/secure/whoami');
            return { status: res.status, challenge: res.headers.get('WWW-Authenticate'), seen };
        }"""
    )
    assert events == {
        "status": 401,
        "challenge": 'Bearer error="insufficient_user_authentication"',
        "seen": ["/secure/whoami"],
    }
    # The page's own reaction: it asks for a stronger login ...
    await page.wait_for_selector("#login-section:not([hidden])")
    assert await page.is_visible("#stepup-note")
    assert "second factor" in (await page.text_content("#status") or "")
    # ... and a passkey login brings a session that the route admits.
    await page.click("#passkey-login")
    await page.wait_for_function("document.getElementById('status').textContent.includes('with a passkey')")
    await page.click("#mfa-route")
    await page.wait_for_function("document.getElementById('output').textContent.includes('/api/whoami')")
