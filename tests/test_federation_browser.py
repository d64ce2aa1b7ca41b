"""Federated login end to end in real headless Chromium: the demo page's provider button, the real
provider's login form, back to the gateway, and API calls on our own rotating session.

Chromium is Debian's /usr/bin/chromium; nothing here downloads a browser. Without it the test fails,
unless GATEWAY_ALLOW_MISSING names browser (then it skips).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.http.keys import STORE
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, FED_TOKENS, MakeFed
from tests.support import build_config, chromium


@pytest.fixture
async def context() -> AsyncIterator[Any]:
    async with chromium() as browser:
        ctx = await browser.new_context()
        ctx.set_default_timeout(15_000)
        yield ctx
        await ctx.close()


async def test_browser_login_with_provider_button_then_api_on_our_session(
    make_fed: MakeFed, context: Any, tmp_path: Path, upstream_url: str
) -> None:
    def config(issuer: str) -> Any:
        idp = {"name": "corp", "issuer": issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        return build_config(
            tmp_path,
            upstream_url,
            identity_providers=[idp],
            tokens=FED_TOKENS,
            routes=[
                {"prefix": "/api", "upstream": upstream_url, "auth": "required", "timeout": "5s"},
                {"prefix": "/", "upstream": upstream_url, "auth": "public"},
            ],
        )

    fed = await make_fed(config=config)
    page = await context.new_page()
    await page.goto(fed.base + "/")
    await page.evaluate("window.demoReady")
    assert await page.is_visible("#login-section")
    await page.click("#login-with-corp")
    # The provider's own login page (another origin), filled in as a person would.
    await page.wait_for_selector("input[name=login]")
    assert page.url.startswith(fed.provider.issuer)
    await page.fill("input[name=login]", "alice")
    await page.fill("input[name=password]", "any password")
    await page.click("button[type=submit]")
    await page.wait_for_url(fed.base + "/")
    await page.evaluate("window.demoReady")
    await page.wait_for_selector("#app-section", state="visible")
    assert await page.evaluate("window.demoWhoami()") == 200
    shown = json.loads(await page.text_content("#output") or "{}")
    assert shown["email"] == "alice@corp.test"
    # The gateway's own cookies (the refresh cookie only for the auth prefix); cookies are per host,
    # not per port, so the provider's session cookie on 127.0.0.1 is in the jar too, never a token of it.
    cookies = {c["name"]: c for c in await context.cookies(fed.base + "/auth/refresh-token")}
    assert {"refresh_token", "access_token"} <= set(cookies)
    assert not any(c["value"].count(".") == 2 for n, c in cookies.items() if n != "access_token")
    assert cookies["refresh_token"]["httpOnly"] and cookies["refresh_token"]["path"] == "/auth"
    claims = jwt.decode(cookies["access_token"]["value"], options={"verify_signature": False})
    assert claims["amr"] == ["fed"] and claims["idp"] == "corp"
    assert "__Host-oidc_flow" not in cookies
    # Our rotating session: a refresh replaces the refresh cookie and the API keeps working.
    before = cookies["refresh_token"]["value"]
    await page.evaluate("window.demoAuth.refresh()")
    after = {c["name"]: c for c in await context.cookies(fed.base + "/auth/")}["refresh_token"]["value"]
    assert after != before
    assert await page.evaluate("window.demoWhoami()") == 200
    session = await fed.client.server.app[STORE].find_session(session_id=claims["sid"])
    assert session is not None and session.idp == "corp"
