"""Self-service accounts end to end in headless Chromium: the demo page, a real SMTP server, the gateway's pages.

signup (demo page) -> the mail, read from the test SMTP server -> the verify page's button -> login;
forgot (demo page) -> the mail -> the reset page's form -> the new password logs in, the old does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.http.keys import SESSIONS
from tests.conftest import MakeConfig, MakeGateway
from tests.mailbox import Mailbox, link_token
from tests.support import free_port
from tests.test_browser import EMAIL, PASSWORD, base_url, browser, context, log_in, open_demo  # noqa: F401 (fixtures)

Client = TestClient[Any, Any]
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Mailbox]:
    box = Mailbox(tmp_path / "mail", free_port())
    box.maildir.mkdir()
    box.start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture
async def gw(make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str, mailbox: Mailbox) -> Client:
    cfg = make_config(
        routes=[
            {"prefix": "/api", "upstream": upstream_url, "auth": "required", "timeout": "5s"},
            {"prefix": "/", "upstream": upstream_url, "auth": "public"},
        ],
        accounts={"signup": True, "require_verified_email": True, "link_base": "https://app.example.com"},
        email={"smtp_url": mailbox.url},
    )
    return await make_gateway(cfg)


async def test_browser_signup_mail_verify_page_then_login(gw: Client, context: Any, mailbox: Mailbox) -> None:  # noqa: F811
    page = await open_demo(context, gw)
    await page.fill("#signup-email", EMAIL)
    await page.fill("#signup-password", PASSWORD)
    await page.click("#signup-button")
    await page.wait_for_function("document.getElementById('status').textContent.includes('Check your mail')")
    (mail,) = await mailbox.wait_for(1, address=EMAIL)
    token = link_token(mail, "verify-email")
    # not verified yet: the login is refused after the right password
    await page.fill("#email", EMAIL)
    await page.fill("#password", PASSWORD)
    await page.click("#login-button")
    await page.wait_for_function("document.getElementById('status').dataset.state === 'error'")
    verify = await context.new_page()
    await verify.goto(f"{base_url(gw)}/auth/verify-email?token={token}")
    assert "Confirm your email address" in await verify.title()
    await verify.get_by_role("button", name="Confirm my address").click()
    await verify.wait_for_selector("text=Your email address is verified")
    page = await open_demo(context, gw)
    await log_in(page)


async def test_browser_forgot_reset_page_new_password_logs_in(gw: Client, context: Any, mailbox: Mailbox) -> None:  # noqa: F811
    await gw.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    page = await open_demo(context, gw)
    await page.fill("#forgot-email", EMAIL)
    await page.click("#forgot-button")
    await page.wait_for_function("document.getElementById('status').textContent.includes('reset link is on its way')")
    (mail,) = await mailbox.wait_for(1, address=EMAIL)
    token = link_token(mail, "reset-password")
    reset = await context.new_page()
    await reset.goto(f"{base_url(gw)}/auth/reset-password?token={token}")
    await reset.get_by_label("New password").fill(NEW_PASSWORD)
    await reset.get_by_role("button", name="Set new password").click()
    await reset.wait_for_selector("text=Your new password is set")
    page = await open_demo(context, gw)
    await page.fill("#email", EMAIL)
    await page.fill("#password", PASSWORD)
    await page.click("#login-button")
    await page.wait_for_function("document.getElementById('status').dataset.state === 'error'")
    await page.fill("#password", NEW_PASSWORD)
    await page.click("#login-button")
    await page.wait_for_selector("#app-section", state="visible")
    # and the client's changePassword from the logged-in page
    status = await page.evaluate(
        "(p) => window.demoAuth.changePassword(p.old, p.new).then(() => 'ok', (e) => e.code)",
        {"old": "not the password", "new": PASSWORD},
    )
    assert status == "invalid_credentials"
    assert await page.evaluate("(p) => window.demoAuth.changePassword(p.old, p.new)", {"old": NEW_PASSWORD, "new": PASSWORD})
