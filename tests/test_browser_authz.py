"""The demo page's authorization panel in real headless Chromium: roles, the admin-only route's 403, a
role change reaching the page without a logout, and the token-lifecycle timeline fed by client.js events.

The role is granted from another store, as `gateway users roles` on another host would; the page only
learns of it through the gateway (401 for the stale token, one refresh, the new roles).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.authz.roles import change_roles
from gateway.http.keys import CONFIG, SESSIONS
from gateway.store import open_store
from tests.conftest import MakeConfig, MakeGateway
from tests.test_browser import EMAIL, PASSWORD, Audit, audit, browser, context, log_in, open_demo  # noqa: F401

Client = TestClient[Any, Any]


@pytest.fixture
async def gw(make_gateway: MakeGateway, make_config: MakeConfig, upstream_url: str) -> Client:
    cfg = make_config(
        routes=[
            {"prefix": "/api/admin", "upstream": upstream_url, "auth": "required", "allow": [{"roles": ["admin"]}]},
            {"prefix": "/api", "upstream": upstream_url, "auth": "required", "timeout": "5s"},
            {"prefix": "/", "upstream": upstream_url, "auth": "public"},
        ]
    )
    client = await make_gateway(cfg)
    await client.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    return client


async def _grant(gw: Client, role: str) -> None:
    other = await open_store(gw.server.app[CONFIG].store)
    try:
        user = await other.get_user(email_key=EMAIL)
        assert user is not None
        await change_roles(other, user, add=(role,), now=time.time())
    finally:
        await other.aclose()


async def _timeline(page: Any) -> list[str]:
    """The timeline's entry kinds from the login on (the page's start-up restore attempt comes before)."""
    kinds = list(await page.eval_on_selector_all("#timeline li", "els => els.map(e => e.dataset.kind)"))
    return kinds[_first_token(kinds) :]


def _first_token(kinds: list[str]) -> int:
    return kinds.index("token") if "token" in kinds else len(kinds)


async def test_demo_admin_button_shows_403_then_role_change_reaches_page(gw: Client, context: Any, audit: Audit) -> None:  # noqa: F811
    page = await open_demo(context, gw)
    await log_in(page)
    assert await page.text_content("#roles") == "(none)"
    ttl = await page.text_content("#ttl")
    assert ttl is not None and ttl.endswith(" s") and 0 < int(ttl[:-2]) <= 300
    await page.click("#admin-call")
    await page.wait_for_function("document.getElementById('admin-output').textContent.startsWith('403')")
    assert "insufficient_scope" in (await page.text_content("#admin-output") or "")
    assert await _timeline(page) == ["token"]  # a 403 is an answer, not a reason to refresh

    mark = audit.mark()
    await _grant(gw, "admin")
    # The page's token predates the change: once the gateway's poll has it (< 1 s) the call gets a 401,
    # client.js refreshes once and retries with a token that carries the new role.
    deadline = time.monotonic() + 3
    status = 0
    while time.monotonic() < deadline and status != 200:
        status = await page.evaluate("window.demoCallAdmin()")
    assert status == 200
    assert (await page.text_content("#admin-output") or "").startswith("200")
    assert await page.text_content("#roles") == "admin"
    kinds = await _timeline(page)
    assert kinds[:1] == ["token"] and "unauthorized" in kinds
    after = kinds[kinds.index("unauthorized") :]
    assert after[:4] == ["unauthorized", "refreshing", "token", "refreshed"], kinds
    assert len(audit.refreshes(since=mark)) == 1
    assert await page.get_attribute("#app-section", "hidden") is None  # still logged in


async def test_demo_timeline_shows_expiry_401_refresh_and_rotation(gw: Client, context: Any, audit: Audit, clock: Any) -> None:  # noqa: F811
    page = await open_demo(context, gw)
    await log_in(page)
    clock.advance(301)  # past the access token's 300 s
    assert await page.evaluate("window.demoWhoami()") == 200
    kinds = await _timeline(page)
    assert kinds == ["token", "unauthorized", "refreshing", "token", "refreshed"], kinds
    texts = await page.eval_on_selector_all("#timeline li", "els => els.map(e => e.textContent)")
    assert any('401 from /api/whoami: Bearer error="invalid_token"' in t for t in texts), texts
    await page.click("#logout")
    await page.wait_for_selector("#login-section", state="visible")
    assert (await _timeline(page))[-1] == "logged-out"
    assert await page.text_content("#roles") == "(none)"
