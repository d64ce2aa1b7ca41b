"""Federated login against a real OpenID provider (oidc-provider on Node, see tests/oidc_provider.py).

The gateway runs on a real port that the provider knows as the client's redirect URI; the user logs in
at the provider through its real login form (driven with aiohttp), and the tests assert what the
gateway answers, what it stores, and what reaches the upstream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.http.keys import CLOCK, SESSIONS, STORE
from tests.oidc_provider import CLIENT_ID, Fed, MakeFed, ProviderBrowser

Client = TestClient[Any, Any]
PASSWORD = "correct horse battery staple"


def _cookie(resp: Any, name: str) -> Any:
    return resp.cookies.get(name)


async def _whoami(client: Client, **kwargs: Any) -> Any:
    return await client.get("/api/whoami", **kwargs)


# -- providers and the login redirect -------------------------------------------------------------


async def test_providers_lists_each_with_login_url(fed: Fed) -> None:
    resp = await fed.client.get("/auth/providers")
    assert resp.status == 200
    assert await resp.json() == {"providers": [{"name": "corp", "login_url": "/auth/oidc/corp/login"}]}


async def test_login_redirects_to_provider_with_pkce_state_nonce_and_sets_flow_cookie(fed: Fed) -> None:
    resp = await fed.client.get("/auth/oidc/corp/login?return_to=/api/x", allow_redirects=False)
    assert resp.status == 302
    location = resp.headers["Location"]
    assert location.startswith(f"{fed.provider.issuer}/auth?")
    q = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID
    assert q["redirect_uri"] == f"{fed.base}/auth/oidc/corp/callback"
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert len(q["state"]) >= 40 and len(q["nonce"]) >= 40 and q["state"] != q["nonce"]
    assert set(q["scope"].split()) == {"openid", "email", "profile"}
    flow = _cookie(resp, "__Host-oidc_flow")
    # __Host- (Secure, no Domain, Path=/): a sibling subdomain cannot plant one; before this stop the
    # cookie was plain "oidc_flow" on the callback's path.
    assert flow["httponly"] and flow["samesite"] == "Lax" and flow["path"] == "/" and not flow["domain"]
    assert flow["secure"] and 0 < int(flow["max-age"]) <= 600
    # Nothing readable in the cookie: state, nonce and return_to are sealed.
    for secret in (q["state"], q["nonce"], "/api/x"):
        assert secret not in flow.value
    assert resp.headers["Cache-Control"] == "no-store"


async def test_flow_cookie_never_reaches_the_upstream_and_a_planted_plain_one_is_ignored(fed: Fed) -> None:
    location, _ = await fed.start_login()
    flow = next(c for c in fed.client.session.cookie_jar if c.key == "__Host-oidc_flow").value
    echoed = await fed.client.get("/public/echo", headers={"Cookie": f"__Host-oidc_flow={flow}; app=1"})
    assert echoed.status == 200
    assert (await echoed.json())["headers"].get("Cookie") == "app=1"
    # The name a sibling subdomain could set (Domain=parent) is not the one the callback reads.
    url = await fed.provider_login(location)
    fed.client.session.cookie_jar.clear()
    parts = urlsplit(url)
    resp = await fed.client.get(f"{parts.path}?{parts.query}", allow_redirects=False, headers={"Cookie": f"oidc_flow={flow}"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_state"


async def test_flow_cookie_with_a_cookie_domain_keeps_the_callback_path(
    make_fed: MakeFed, tmp_path: Any, upstream_url: str
) -> None:
    from tests.oidc_provider import CLIENT_SECRET, FED_TOKENS
    from tests.support import build_config

    def config(issuer: str) -> Any:
        idp = {"name": "corp", "issuer": issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        return build_config(tmp_path, upstream_url, identity_providers=[idp], tokens=FED_TOKENS, cookies={"domain": "127.0.0.1"})

    fed = await make_fed(config=config)
    resp = await fed.client.get("/auth/oidc/corp/login", allow_redirects=False)
    assert resp.status == 302
    # A Domain attribute rules out the prefix; the cookie stays on the callback's path instead.
    assert "__Host-oidc_flow" not in resp.cookies and resp.cookies["oidc_flow"]["path"] == "/auth/oidc/corp/callback"


async def test_login_unknown_provider_is_404(fed: Fed) -> None:
    resp = await fed.client.get("/auth/oidc/nope/login", allow_redirects=False)
    assert resp.status == 404


# -- the happy path ----------------------------------------------------------------------------------


async def test_callback_starts_our_rotating_session_and_api_works(fed: Fed) -> None:
    resp = await fed.login("alice", return_to="/api/echo?x=1")
    assert resp.status == 302, await resp.text()
    assert resp.headers["Location"] == "/api/echo?x=1"
    names = {c.key for c in resp.cookies.values()}
    assert names == {"refresh_token", "access_token", "__Host-oidc_flow"}
    assert resp.cookies["__Host-oidc_flow"]["max-age"] == "0"
    access = resp.cookies["access_token"].value
    claims = jwt.decode(access, options={"verify_signature": False})
    assert claims["amr"] == ["fed"] and claims["idp"] == "corp" and claims["email"] == "alice@corp.test"
    # Our own token, not the provider's: issued by the gateway for the API audience.
    assert claims["iss"] == "gateway" and claims["aud"] == "api"
    who = await _whoami(fed.client)
    assert who.status == 200
    headers = (await who.json())["headers"]
    assert headers["X-User-Email"] == "alice@corp.test" and headers["X-User-Id"] == claims["sub"]
    assert "Authorization" not in headers
    # The refresh cookie rotates like any session's.
    old_refresh = resp.cookies["refresh_token"].value
    r = await fed.client.post("/auth/refresh-token", headers={"Origin": fed.base})
    assert r.status == 200
    assert r.cookies["refresh_token"].value != old_refresh
    reuse = await fed.client.post(
        "/auth/refresh-token", json={"refresh_token": old_refresh}, headers={"Origin": fed.base}
    )
    # Outside the grace window a rotated token is theft; within it, it is a race (twin) — both are ours.
    assert reuse.status in (200, 403)
    store = fed.client.server.app[STORE]
    session = await store.find_session(session_id=claims["sid"])
    assert session is not None and session.amr == ("fed",) and session.idp == "corp"


async def test_callback_second_login_same_subject_same_user(fed: Fed) -> None:
    first = await fed.login("alice")
    second = await fed.login("alice")
    sub1 = jwt.decode(first.cookies["access_token"].value, options={"verify_signature": False})["sub"]
    sub2 = jwt.decode(second.cookies["access_token"].value, options={"verify_signature": False})["sub"]
    assert sub1 == sub2
    users = await fed.client.server.app[STORE].list_users()
    assert [u.email for u in users] == ["alice@corp.test"]


async def test_created_user_cannot_log_in_with_a_password(fed: Fed) -> None:
    await fed.login("alice")
    for password in ("", "!", "any password", PASSWORD):
        resp = await fed.client.post(
            "/auth/login", json={"email": "alice@corp.test", "password": password}, headers={"Origin": fed.base}
        )
        assert resp.status in (400, 401)
        assert (await resp.json())["error"] in ("invalid_credentials", "invalid_request")


async def test_first_login_links_existing_account_by_verified_email(fed: Fed) -> None:
    local = await fed.client.server.app[SESSIONS].add_user("Alice@Corp.test", PASSWORD)
    resp = await fed.login("alice")
    assert resp.status == 302
    claims = jwt.decode(resp.cookies["access_token"].value, options={"verify_signature": False})
    assert claims["sub"] == local.id
    assert await fed.client.server.app[STORE].find_identity(provider="corp", subject="alice") == local.id
    # The password keeps working for that account.
    pw = await fed.client.post(
        "/auth/login", json={"email": "alice@corp.test", "password": PASSWORD}, headers={"Origin": fed.base}
    )
    assert pw.status == 200


async def test_unverified_email_never_links_to_existing_account(fed: Fed) -> None:
    await fed.client.server.app[SESSIONS].add_user("victim@corp.test", PASSWORD)
    resp = await fed.login("mallory")
    assert resp.status == 403
    assert (await resp.json())["error"] == "email_not_verified"
    assert "refresh_token" not in resp.cookies and resp.cookies["__Host-oidc_flow"]["max-age"] == "0"
    assert await fed.client.server.app[STORE].find_identity(provider="corp", subject="mallory") is None


async def test_presigned_unverified_account_is_taken_over_by_the_provider_login(
    make_fed: MakeFed, tmp_path: Any, upstream_url: str
) -> None:
    """The attacker signs up with the victim's address, never verifies it, logs in and keeps the
    session. The victim's first provider login (address verified there) must not become the
    attacker's account: before this stop it was linked as it was, and the attacker's password and
    session kept working on it."""
    from tests.oidc_provider import CLIENT_SECRET, FED_TOKENS
    from tests.support import build_config, free_port

    def config(issuer: str) -> Any:
        idp = {"name": "corp", "issuer": issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        return build_config(
            tmp_path, upstream_url, identity_providers=[idp], tokens=FED_TOKENS,
            accounts={"signup": True, "link_base": "https://app.example.com"},
            email={"smtp_url": f"smtp://127.0.0.1:{free_port()}", "from": "Gateway <no-reply@example.com>"},
        )  # fmt: skip

    fed = await make_fed(config=config)
    origin = {"Origin": fed.base}
    signup = await fed.client.post("/auth/signup", json={"email": "Alice@corp.test", "password": "attacker-pw"}, headers=origin)
    assert signup.status == 202
    store = fed.client.server.app[STORE]
    for _ in range(100):  # sign-up is queued (the answer never waits on it)
        if (planted := await store.get_user(email_key="alice@corp.test")) is not None:
            break
        await asyncio.sleep(0.05)
    assert planted is not None and not await store.is_email_verified(planted.id)
    attacker = await fed.client.post(
        "/auth/login", json={"email": "alice@corp.test", "password": "attacker-pw", "refresh_in_body": True}, headers=origin
    )
    assert attacker.status == 200
    attacker_refresh = (await attacker.json())["refresh_token"]
    fed.client.session.cookie_jar.clear()

    victim = await fed.login("alice")
    assert victim.status == 302, await victim.text()
    claims = jwt.decode(victim.cookies["access_token"].value, options={"verify_signature": False})
    assert claims["sub"] == planted.id  # the account was taken over, not duplicated
    assert [u.email for u in await store.list_users()] == [planted.email]
    assert await store.is_email_verified(planted.id)
    # The attacker's session, refresh token and password are all dead.
    fed.client.session.cookie_jar.clear()
    again = await fed.client.post("/auth/refresh-token", json={"refresh_token": attacker_refresh}, headers=origin)
    assert again.status in (401, 403), await again.text()
    pw = await fed.client.post("/auth/login", json={"email": "alice@corp.test", "password": "attacker-pw"}, headers=origin)
    assert pw.status == 401 and (await pw.json())["error"] == "invalid_credentials"
    sessions = await store.list_sessions(planted.id, now=time.time() + 1)
    assert [s.idp for s in sessions] == ["corp"]


async def test_verified_local_account_is_linked_not_taken_over(fed: Fed) -> None:
    # users add makes verified accounts: the owner's password keeps working (the takeover is only
    # for addresses nobody proved).
    local = await fed.client.server.app[SESSIONS].add_user("alice@corp.test", PASSWORD)
    assert (await fed.login("alice")).status == 302
    pw = await fed.client.post("/auth/login", json={"email": "alice@corp.test", "password": PASSWORD}, headers={"Origin": fed.base})
    assert pw.status == 200
    assert (await fed.client.server.app[STORE].get_user(user_id=local.id)).password_hash == local.password_hash


async def test_provider_address_with_two_addresses_is_refused(make_fed: MakeFed) -> None:
    # Before this stop the domain check read "corp.test" after the last @ and the account was made
    # for "attacker@evil.test,ceo@corp.test", whose mails go to the attacker.
    fed = await make_fed(allowed_email_domains=["corp.test"])
    resp = await fed.login("twoaddr")
    assert resp.status == 403 and (await resp.json())["error"] == "domain_not_allowed"
    open_fed = await make_fed()
    resp = await open_fed.login("twoaddr")
    assert resp.status == 403 and (await resp.json())["error"] == "email_not_verified"
    assert await open_fed.client.server.app[STORE].list_users() == []


async def test_callback_replayed_at_another_instance_fails(
    make_fed: MakeFed, aiohttp_server: Any, aiohttp_client: Any, clock: Any
) -> None:
    """Workers and instances share the store, and so the record of used callbacks: before this stop
    each process kept its own, so a replay at another one went on to the provider (502)."""
    from gateway.app import create_app
    from gateway.http.keys import CONFIG

    fed = await make_fed()
    location, _ = await fed.start_login()
    url = await fed.provider_login(location)
    flow = next(c for c in fed.client.session.cookie_jar if c.key == "__Host-oidc_flow").value
    assert (await fed.callback(url)).status == 302
    other = await aiohttp_client(await aiohttp_server(create_app(fed.client.server.app[CONFIG], clock=clock)))
    parts = urlsplit(url)
    again = await other.get(f"{parts.path}?{parts.query}", allow_redirects=False, headers={"Cookie": f"__Host-oidc_flow={flow}"})
    assert again.status == 400 and (await again.json())["error"] == "invalid_state"
    assert "refresh_token" not in again.cookies


async def test_unverified_email_creates_no_account(fed: Fed) -> None:
    resp = await fed.login("mallory")
    assert resp.status == 403 and (await resp.json())["error"] == "email_not_verified"
    assert await fed.client.server.app[STORE].list_users() == []


async def test_no_email_claim_is_refused(fed: Fed) -> None:
    resp = await fed.login("noemail")
    assert resp.status == 403 and (await resp.json())["error"] == "email_not_verified"


async def test_domain_not_allowed_is_403(make_fed: MakeFed) -> None:
    fed = await make_fed(allowed_email_domains=["corp.test"])
    resp = await fed.login("outsider")
    assert resp.status == 403 and (await resp.json())["error"] == "domain_not_allowed"
    ok = await fed.login("alice")
    assert ok.status == 302


async def test_create_users_false_unknown_address_is_account_not_found(make_fed: MakeFed) -> None:
    fed = await make_fed(create_users=False)
    resp = await fed.login("alice")
    assert resp.status == 403 and (await resp.json())["error"] == "account_not_found"
    await fed.client.server.app[SESSIONS].add_user("alice@corp.test", PASSWORD)
    assert (await fed.login("alice")).status == 302


async def test_disabled_linked_user_gets_no_session(fed: Fed) -> None:
    await fed.login("alice")
    await fed.client.server.app[SESSIONS].set_disabled("alice@corp.test", disabled=True)
    resp = await fed.login("alice")
    assert resp.status == 403 and "refresh_token" not in resp.cookies


# -- attacks on the flow -----------------------------------------------------------------------------


async def test_callback_without_flow_cookie_is_invalid_state(fed: Fed) -> None:
    location, _ = await fed.start_login()
    url = await fed.provider_login(location)
    fed.client.session.cookie_jar.clear()
    resp = await fed.callback(url)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_state"


async def test_callback_with_other_state_is_invalid_state(fed: Fed) -> None:
    location, _ = await fed.start_login()
    url = await fed.provider_login(location)
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q["state"] = q["state"][:-2] + ("AA" if not q["state"].endswith("AA") else "BB")
    resp = await fed.client.get(f"{parts.path}?{urlencode(q)}", allow_redirects=False)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_state"


async def test_callback_with_forged_flow_cookie_is_invalid_state(fed: Fed) -> None:
    location, _ = await fed.start_login()
    url = await fed.provider_login(location)
    fed.client.session.cookie_jar.clear()
    fed.client.session.cookie_jar.update_cookies({"__Host-oidc_flow": "gAAAAAforged"})
    resp = await fed.callback(url)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_state"


async def test_replayed_callback_fails(fed: Fed) -> None:
    location, _ = await fed.start_login()
    url = await fed.provider_login(location)
    flow = next(c for c in fed.client.session.cookie_jar if c.key == "__Host-oidc_flow").value
    first = await fed.callback(url)
    assert first.status == 302
    # The attacker replays both the URL and the (captured) flow cookie.
    fed.client.session.cookie_jar.update_cookies({"__Host-oidc_flow": flow})
    again = await fed.client.get(
        f"{urlsplit(url).path}?{urlsplit(url).query}", allow_redirects=False, headers={"Cookie": f"__Host-oidc_flow={flow}"}
    )
    assert again.status == 400 and (await again.json())["error"] == "invalid_state"
    assert "refresh_token" not in again.cookies


async def test_interleaved_logins_first_callback_refused(fed: Fed) -> None:
    first_location, _ = await fed.start_login()
    await fed.start_login()  # a second login in the same browser replaces the flow cookie
    url = await fed.provider_login(first_location)
    resp = await fed.callback(url)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_state"


async def test_code_of_another_flow_fails_pkce_at_provider(fed: Fed) -> None:
    victim_location, _ = await fed.start_login()
    attacker_code_url = await fed.provider_login(victim_location)
    # The browser starts another login; the attacker injects the first flow's code with this flow's state.
    _, q2 = await fed.start_login()
    code = parse_qs(urlsplit(attacker_code_url).query)["code"][0]
    resp = await fed.client.get(
        "/auth/oidc/corp/callback?" + urlencode({"code": code, "state": q2["state"], "iss": fed.provider.issuer}),
        allow_redirects=False,
    )
    assert resp.status == 502 and (await resp.json())["error"] == "idp_error"
    assert "refresh_token" not in resp.cookies


async def test_code_with_another_nonce_is_refused(fed: Fed) -> None:
    # The attacker saw this browser's authorization URL (state, PKCE challenge) and obtains, in its
    # own provider session, a code for the same challenge but a nonce of its choosing.
    location, q = await fed.start_login()
    forged = dict(q, nonce="attacker-chosen-nonce-0123456789")
    forged_location = location.split("?")[0] + "?" + urlencode(forged)
    url = await fed.provider_login(forged_location)
    resp = await fed.callback(url)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_state"
    assert "refresh_token" not in resp.cookies


async def test_callback_iss_of_another_issuer_is_refused(fed: Fed) -> None:
    location, _ = await fed.start_login()
    url = await fed.provider_login(location)
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for iss in ("https://evil.example", None):
        fed.client.session.cookie_jar.clear()
        location, _ = await fed.start_login()
        url = await fed.provider_login(location)
        parts = urlsplit(url)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if iss is None:
            q.pop("iss")
        else:
            q["iss"] = iss
        resp = await fed.client.get(f"{parts.path}?{urlencode(q)}", allow_redirects=False)
        # The provider says it always sends iss (RFC 9207), so a missing one is a mix-up too.
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_state", iss


async def test_provider_error_answer_is_idp_error(fed: Fed) -> None:
    _, q = await fed.start_login()
    resp = await fed.client.get(
        "/auth/oidc/corp/callback?"
        + urlencode({"error": "access_denied", "state": q["state"], "iss": fed.provider.issuer}),
        allow_redirects=False,
    )
    assert resp.status == 502 and (await resp.json())["error"] == "idp_error"


@pytest.mark.parametrize(
    "return_to",
    [
        "//evil.example",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "https://evil.example/",
        "/\t/evil.example",
        "%2F%2Fevil",
    ],
)
async def test_callback_return_to_outside_origin_goes_to_root(fed: Fed, return_to: str) -> None:
    resp = await fed.login("alice", return_to=return_to)
    assert resp.status == 302 and resp.headers["Location"] == "/"


async def test_provider_down_mid_login_is_idp_error_and_passwords_still_work(fed: Fed) -> None:
    await fed.client.server.app[SESSIONS].add_user("local@example.com", PASSWORD)
    location, _ = await fed.start_login()
    url = await fed.provider_login(location)
    fed.provider.kill()
    resp = await fed.callback(url)
    assert resp.status == 502 and (await resp.json())["error"] == "idp_error"
    assert (await fed.client.get("/healthz")).status == 200
    pw = await fed.client.post(
        "/auth/login", json={"email": "local@example.com", "password": PASSWORD}, headers={"Origin": fed.base}
    )
    assert pw.status == 200
    fed.client.session.cookie_jar.clear()
    again = await fed.client.get("/auth/oidc/corp/login", allow_redirects=False)
    # The failed exchange dropped the cached discovery document, so a new login fetches it again, and
    # fails plainly while the provider is down.
    assert again.status == 502 and (await again.json())["error"] == "idp_error"


# -- back-channel logout -------------------------------------------------------------------------------


async def test_backchannel_logout_revokes_the_session_within_1s(fed: Fed) -> None:
    resp = await fed.login("alice", keep=True)
    assert resp.status == 302
    assert (await _whoami(fed.client)).status == 200
    loop = asyncio.get_running_loop()
    # The provider POSTs the logout token to the gateway before it answers the logout form, so the
    # clock starts when the provider is done: its own page rendering on a loaded machine is not the
    # gateway's lag, and the 1 s is what the gateway may take after it has been told.
    await fed.browser.logout(fed.provider.issuer)
    deadline = loop.time() + 1.0
    while (await _whoami(fed.client)).status != 401:
        assert loop.time() < deadline, "the session still works 1 s after the provider's logout"
        await asyncio.sleep(0.05)
    refresh = await fed.client.post("/auth/refresh-token", headers={"Origin": fed.base})
    assert refresh.status == 403


async def test_backchannel_logout_ends_a_session_begun_in_the_same_second(fed: Fed) -> None:
    """A logout token's `iat` has whole seconds: a session begun at N.05 and ended at the provider
    within second N carries a token with iat = N, and it began before that token, not after."""
    while time.time() % 1 > 0.05:  # the start of a second, so the logout is likely in the same one
        await asyncio.sleep(0.005)
    clock = fed.client.server.app[CLOCK]
    clock.now = time.time()  # the gateway's clock on the wall clock: no skew for the leeway (0 s) to cover
    assert (await fed.login("alice", keep=True)).status == 302
    assert (await _whoami(fed.client)).status == 200
    await fed.browser.logout(fed.provider.issuer)  # the provider POSTs the logout token before it answers
    assert (await _whoami(fed.client)).status == 401


async def test_backchannel_logout_bad_tokens_are_400(fed: Fed) -> None:
    url = "/auth/oidc/corp/backchannel-logout"
    for data in ({"logout_token": "not-a-jwt"}, {}, {"logout_token": ""}):
        resp = await fed.client.post(url, data=data)
        assert resp.status == 400, data
        assert (await resp.json())["error"] == "invalid_request"
    # Signed by a key the provider never published.
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        {"iss": fed.provider.issuer, "aud": CLIENT_ID, "iat": 2_000_000_000, "jti": "j", "sub": "alice",
         "events": {"http://schemas.openid.net/event/backchannel-logout": {}}},
        key, algorithm="RS256", headers={"kid": "attacker"},
    )  # fmt: skip
    resp = await fed.client.post(url, data={"logout_token": token})
    assert resp.status == 400
    json_body = await fed.client.post(url, json={"logout_token": token})
    assert json_body.status == 400


async def test_backchannel_logout_at_one_instance_bites_on_another_within_1s(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Any, upstream_url: str, clock: Any, pg_url: str
) -> None:
    # Two gateways on one PostgreSQL database; the provider tells only A, the user is logged in at B.
    from aiohttp import CookieJar

    from gateway.app import create_app
    from tests.oidc_provider import CLIENT_SECRET, FED_TOKENS, OidcProvider
    from tests.support import build_config, free_port

    port_a, port_b = free_port(), free_port()
    a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    provider = await asyncio.to_thread(
        OidcProvider,
        redirect_uris=[f"{a}/auth/oidc/corp/callback", f"{b}/auth/oidc/corp/callback"],
        backchannel_logout_uri=f"{a}/auth/oidc/corp/backchannel-logout",
    )
    browser = ProviderBrowser()
    try:
        idp = {"name": "corp", "issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        cfg = build_config(tmp_path, upstream_url, store={"url": pg_url}, identity_providers=[idp], tokens=FED_TOKENS)
        clock.now = time.time()
        await aiohttp_server(create_app(cfg, clock=clock), port=port_a)
        server_b = await aiohttp_server(create_app(cfg, clock=clock), port=port_b)
        client_b = await aiohttp_client(server_b, cookie_jar=CookieJar(unsafe=True, treat_as_secure_origin=[b]))
        fed_b = Fed(client=client_b, provider=provider, browser=browser, base=b)
        assert (await fed_b.login("alice", keep=True)).status == 302
        assert (await _whoami(client_b)).status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        await browser.logout(provider.issuer)
        while (await _whoami(client_b)).status != 401:
            assert loop.time() < started + 1.0, "instance B still accepts the session 1 s after the logout at A"
            await asyncio.sleep(0.05)
        refresh = await client_b.post("/auth/refresh-token", headers={"Origin": b})
        assert refresh.status == 403
    finally:
        await browser.close()
        provider.stop()


async def test_openapi_lists_the_federation_endpoints_of_each_provider(fed: Fed) -> None:
    doc = await (await fed.client.get("/auth/openapi.json")).json()
    for path, method in [
        ("/auth/providers", "get"),
        ("/auth/oidc/corp/login", "get"),
        ("/auth/oidc/corp/callback", "get"),
        ("/auth/oidc/corp/backchannel-logout", "post"),
    ]:
        assert method in doc["paths"][path], path
    assert set(doc["paths"]["/auth/oidc/corp/callback"]["get"]["responses"]) >= {"302", "400", "403", "502"}


# -- roles from the provider's groups (roles_claim) -------------------------------------------------


def _token_claims(resp: Any) -> dict[str, Any]:
    return jwt.decode(resp.cookies["access_token"].value, options={"verify_signature": False})


async def test_roles_claim_groups_become_roles_and_reach_the_upstream(make_fed: MakeFed) -> None:
    fed = await make_fed(roles_claim="groups", scopes=["openid", "email", "profile", "groups"])
    resp = await fed.login("alice")
    assert resp.status == 302
    assert _token_claims(resp)["roles"] == ["admins", "staff"]
    headers = (await (await _whoami(fed.client)).json())["headers"]
    assert headers["X-User-Roles"] == "admins,staff"
    user = await fed.client.server.app[STORE].get_user(email_key="alice@corp.test")
    assert user is not None and user.roles == ("admins", "staff")


async def test_roles_claim_replaces_local_roles_at_each_login(make_fed: MakeFed) -> None:
    fed = await make_fed(roles_claim="groups", scopes=["openid", "email", "profile", "groups"])
    first = await fed.login("alice")
    store = fed.client.server.app[STORE]
    await store.set_user_roles(_token_claims(first)["sub"], ("ops", "root"), now=0)
    again = await fed.login("alice")
    assert _token_claims(again)["roles"] == ["admins", "staff"]


async def test_roles_claim_values_that_are_not_role_names_are_left_out(make_fed: MakeFed) -> None:
    fed = await make_fed(roles_claim="groups", scopes=["openid", "email", "profile", "groups"])
    resp = await fed.login("mixed")
    assert resp.status == 302
    assert _token_claims(resp)["roles"] == ["ok-role", "ops"]


async def test_without_roles_claim_provider_groups_grant_nothing(fed: Fed) -> None:
    resp = await fed.login("alice")
    assert _token_claims(resp).get("roles", []) == []


async def test_provider_unreachable_at_login_start_is_idp_error(
    make_fed: MakeFed, tmp_path: Any, upstream_url: str
) -> None:
    from tests.oidc_provider import CLIENT_SECRET
    from tests.support import build_config

    def config(issuer: str) -> Any:
        idp = {"name": "corp", "issuer": "http://127.0.0.1:1", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        return build_config(tmp_path, upstream_url, identity_providers=[idp])

    fed = await make_fed(config=config)
    resp = await fed.client.get("/auth/oidc/corp/login", allow_redirects=False)
    assert resp.status == 502 and (await resp.json())["error"] == "idp_error"
    assert "__Host-oidc_flow" not in resp.cookies
    assert (await fed.client.get("/healthz")).status == 200
