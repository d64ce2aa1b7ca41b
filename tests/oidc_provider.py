"""A real OpenID provider for the tests: panva's oidc-provider (tests/oidc/provider.mjs) run by Node on
loopback, and a way to log in at it without a browser by submitting its dev login form with aiohttp.

Without node or `npm ci --prefix tests/oidc` the tests that need it fail, unless GATEWAY_ALLOW_MISSING
names oidc (then they skip).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import CookieJar
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config
from tests.support import FakeClock, build_config, free_port, missing_service

Client = TestClient[Any, Any]

OIDC_DIR = Path(__file__).with_name("oidc")
CLIENT_ID = "gateway"
CLIENT_SECRET = "gateway-client-secret-0123456789"
ACCOUNTS: dict[str, dict[str, Any]] = {
    # Verified, with groups; sub "alice" (the login name), address alice@corp.test.
    "alice": {"email": "alice@corp.test", "email_verified": True, "name": "Alice", "groups": ["admins", "staff"]},
    # The provider does not vouch for this address.
    "mallory": {"email": "victim@corp.test", "email_verified": False, "name": "Mallory"},
    "outsider": {"email": "eve@elsewhere.test", "email_verified": True},
    "noemail": {"name": "No Email"},
    # Two addresses in one claim, vouched for: its "domain" after the last @ is corp.test.
    "twoaddr": {"email": "attacker@evil.test,ceo@corp.test", "email_verified": True},
    # Groups as providers send them: mixed case, Keycloak-style paths, a non-string.
    "mixed": {"email": "mixed@corp.test", "email_verified": True, "groups": ["Ops", "ops", "/team/a", "ok-role", 5]},
}


class OidcProvider:
    """One oidc-provider process; `issuer` is its URL. Stop it with `stop()` (or `kill()` mid-test)."""

    def __init__(
        self, *, redirect_uris: list[str], backchannel_logout_uri: str | None = None, issuer: str | None = None
    ) -> None:
        node = shutil.which("node")
        if node is None:
            missing_service("oidc", "node is not installed (Debian package `nodejs`)")
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            missing_service("oidc", "oidc-provider is not installed (run `npm ci --prefix tests/oidc`)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.issuer = issuer or self.url
        client: dict[str, Any] = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirect_uris,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        }
        if backchannel_logout_uri:
            client["backchannel_logout_uri"] = backchannel_logout_uri
            client["backchannel_logout_session_required"] = True
        options = {"port": self.port, "issuer": self.issuer, "clients": [client], "accounts": ACCOUNTS}
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [node, str(OIDC_DIR / "provider.mjs"), json.dumps(options)], stdout=subprocess.DEVNULL, stderr=self._log
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.url}/.well-known/openid-configuration"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"oidc-provider exited: {self._log.read().decode(errors='replace')}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("oidc-provider did not come up")

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def kill(self) -> None:
        """Ends the provider at once (the provider going down)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class _Forms(HTMLParser):
    """The forms of a page: action and the named inputs' values (stdlib HTML parser)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action") or "", "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value") or ""


class ProviderBrowser:
    """A user agent at the provider only (its own cookie jar): logs in through the dev login form and
    logs out through the end-session confirm form, as a person would click through them."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def login(self, authorize_url: str, login: str, *, stop_at: str) -> str:
        """Follows the provider's pages from `authorize_url`, submitting its login form for `login`.

        Returns the first redirect to a URL starting with `stop_at` (the gateway's callback), not followed.
        """
        url, method, data = authorize_url, "GET", None
        for _ in range(12):
            async with self.session.request(method, url, data=data, allow_redirects=False) as resp:
                if resp.status in (302, 303):
                    target = urljoin(url, resp.headers["Location"])
                    if target.startswith(stop_at):
                        return target
                    url, method, data = target, "GET", None
                    continue
                html = await resp.text()
                if resp.status != 200:
                    raise AssertionError(f"provider answered {resp.status}: {html[:500]}")
            form = _first_form(html)
            fields = dict(form["fields"])
            if fields.get("prompt") == "login":
                fields.update(login=login, password="any password")
            url, method, data = urljoin(url, form["action"]), "POST", fields
        raise AssertionError("the provider never redirected back")

    async def logout(self, issuer: str) -> None:
        """Ends the provider session (RP-initiated logout page, "Yes, sign me out"); the provider then
        POSTs logout tokens to every client's back-channel logout URI before it answers."""
        async with self.session.get(f"{issuer}/session/end", allow_redirects=False) as resp:
            html = await resp.text()
            assert resp.status == 200, html[:500]
        form = _first_form(html)
        fields = {**form["fields"], "logout": "yes"}
        async with self.session.post(urljoin(issuer, form["action"]), data=fields, allow_redirects=False) as resp:
            assert resp.status in (200, 302, 303), (await resp.text())[:500]


def _first_form(html: str) -> dict[str, Any]:
    parser = _Forms()
    parser.feed(html)
    if not parser.forms:
        raise AssertionError(f"provider page has no form: {html[:500]}")
    return parser.forms[0]


@dataclass
class Fed:
    """A gateway on a real port with provider "corp" configured, and that provider running."""

    client: Client
    provider: OidcProvider
    browser: ProviderBrowser
    base: str  # the gateway's origin

    @property
    def callback_prefix(self) -> str:
        return f"{self.base}/auth/oidc/corp/callback"

    async def start_login(self, return_to: str | None = None) -> tuple[str, dict[str, str]]:
        """GET /auth/oidc/corp/login: the provider URL and its query."""
        query = f"?{urlencode({'return_to': return_to})}" if return_to is not None else ""
        resp = await self.client.get(f"/auth/oidc/corp/login{query}", allow_redirects=False)
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
        return location, {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    async def provider_login(self, location: str, login: str = "alice", *, keep: bool = False) -> str:
        """Logs in at the provider (a fresh provider session unless `keep`); the callback URL it redirects to."""
        if keep:
            return await self.browser.login(location, login, stop_at=self.callback_prefix)
        browser = ProviderBrowser()
        try:
            return await browser.login(location, login, stop_at=self.callback_prefix)
        finally:
            await browser.close()

    async def callback(self, url: str) -> Any:
        parts = urlsplit(url)
        return await self.client.get(f"{parts.path}?{parts.query}", allow_redirects=False)

    async def login(self, login: str = "alice", return_to: str | None = None, *, keep: bool = False) -> Any:
        location, _ = await self.start_login(return_to)
        return await self.callback(await self.provider_login(location, login, keep=keep))


MakeFed = Callable[..., Awaitable[Fed]]


# The gateway's clock is a FakeClock set when the provider is up, while the provider stamps its
# tokens with the wall clock as a test runs on: the leeway (the product's default) covers that skew,
# as it covers a real provider's clock being a little ahead.
FED_TOKENS = {"leeway": "30s"}


def _fed_config(tmp_path: Path, upstream_url: str, issuer: str, **idp: Any) -> Config:
    provider = {"name": "corp", "issuer": issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **idp}
    return build_config(tmp_path, upstream_url, identity_providers=[provider], tokens=FED_TOKENS)


@pytest.fixture
async def make_fed(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path, upstream_url: str, clock: FakeClock
) -> AsyncIterator[MakeFed]:
    started: list[tuple[OidcProvider, ProviderBrowser]] = []

    async def make(
        *,
        issuer: str | None = None,
        config: Callable[[str], Config] | None = None,
        backchannel_logout_uri: str | None = None,
        **idp: Any,
    ) -> Fed:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        provider = await asyncio.to_thread(
            OidcProvider,
            redirect_uris=[f"{base}/auth/oidc/corp/callback"],
            backchannel_logout_uri=backchannel_logout_uri or f"{base}/auth/oidc/corp/backchannel-logout",
            issuer=issuer,
        )
        browser = ProviderBrowser()
        started.append((provider, browser))
        clock.now = time.time()  # the provider took a while to start; its tokens carry the wall clock
        cfg = config(provider.issuer) if config else _fed_config(tmp_path, upstream_url, provider.issuer, **idp)
        server = await aiohttp_server(create_app(cfg, clock=clock), port=port)
        jar = CookieJar(unsafe=True, treat_as_secure_origin=[base])
        client: Client = await aiohttp_client(server, cookie_jar=jar)
        return Fed(client=client, provider=provider, browser=browser, base=base)

    yield make
    for provider, browser in started:
        await browser.close()
        provider.stop()


@pytest.fixture
async def fed(make_fed: MakeFed) -> Fed:
    return await make_fed()
