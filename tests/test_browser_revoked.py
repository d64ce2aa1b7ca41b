"""The browser client treats a revoked session as logged out even when the page makes no API call:
a WebSocket closed with 1008 and a refused refresh both end in the demo page saying so (issue 10).
Real headless Chromium on the demo page; the revocation is an admin's, with no other tab to tell."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from gateway.http.keys import SESSIONS
from tests import test_browser as _b
from tests.test_browser import EMAIL, Audit, log_in, open_demo

# The browser suite's fixtures, shared rather than copied.
audit, browser, context, gw = _b.audit, _b.browser, _b.context, _b.gw

Client = TestClient[Any, Any]
REVOKED_TEXT = "Your session was revoked elsewhere. Please log in again."


async def _admin_revokes(gw: Client) -> None:
    sessions = gw.server.app[SESSIONS]
    user = await sessions.get_user(EMAIL)
    assert await sessions.revoke_user(user.id, reason="admin")


async def test_websocket_closed_1008_by_an_admin_revocation_logs_the_page_out(gw: Client, context: Any) -> None:
    page = await open_demo(context, gw)
    await log_in(page)
    await page.click("#ws-connect")
    await page.wait_for_function("document.getElementById('output').textContent.includes('echo: hello over the gateway')")
    await _admin_revokes(gw)
    await page.wait_for_function("document.getElementById('output').textContent.includes('closed: 1008')")
    await page.wait_for_selector("#login-section", state="visible")
    assert await page.text_content("#status") == REVOKED_TEXT
    assert await page.get_attribute("#status", "data-state") == "revoked"
    assert await page.evaluate("window.demoAuth.authenticated") is False


async def test_refused_refresh_logs_the_page_out(gw: Client, context: Any, audit: Audit) -> None:
    page = await open_demo(context, gw)
    await log_in(page)
    await _admin_revokes(gw)
    # The access token is refused (revoked session), the one refresh is refused too.
    assert await page.evaluate("window.demoWhoami()") == 401
    await page.wait_for_selector("#login-section", state="visible")
    assert await page.text_content("#status") == REVOKED_TEXT
    assert await page.evaluate("window.demoAuth.authenticated") is False
