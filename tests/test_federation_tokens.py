"""id_tokens and logout tokens the gateway must refuse: forged keys, unknown kids, wrong algorithms,
replays; and the pure rules of `gateway.federation.flow` on keys made here.

The forged id_tokens come from a real man-in-the-middle: an aiohttp proxy that stands where the
provider's issuer URL points, forwards everything to the real oidc-provider, and re-signs the
id_token in the token endpoint's answer as a test asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.core.errors import BadRequest, IdpError, InvalidState
from gateway.federation.discovery import KEYS_MAX_AGE_S, _max_age
from gateway.federation.flow import (
    BACKCHANNEL_EVENT,
    FlowSealer,
    new_flow,
    pkce_challenge,
    safe_return_to,
    verify_id_token,
    verify_logout_token,
)
from gateway.http.keys import STORE
from tests.oidc_provider import CLIENT_ID, Fed, MakeFed
from tests.support import FakeClock, free_port

_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


class Mitm:
    """Forwards to the provider; `rewrite` (if set) replaces the id_token; `extra_keys` join its JWKS."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.rewrite: Callable[[str], str] | None = None
        self.extra_keys: list[dict[str, Any]] = []
        self.jwks_fetches = 0
        self.logout_tokens: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        # Host is kept: the provider builds its endpoint URLs from it, and they must point back here.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP or k.lower() == "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.target + request.path_qs, headers=headers, data=body, allow_redirects=False
            ) as upstream,
        ):
            data = await upstream.read()
            status, out = upstream.status, [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP]
        if request.path == "/jwks":
            self.jwks_fetches += 1
            if self.extra_keys:
                doc = json.loads(data)
                doc["keys"] += self.extra_keys
                data = json.dumps(doc).encode()
        if request.path == "/token" and status == 200 and self.rewrite is not None:
            doc = json.loads(data)
            doc["id_token"] = self.rewrite(doc["id_token"])
            data = json.dumps(doc).encode()
        response = web.Response(status=status, body=data)
        for k, v in out:
            response.headers.add(k, v)
        return response


@pytest.fixture
async def mitm_fed(make_fed: MakeFed, aiohttp_server: Any) -> tuple[Fed, Mitm]:
    port = free_port()
    fed = await make_fed(issuer=f"http://127.0.0.1:{port}")
    mitm = Mitm(fed.provider.url)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", mitm.handle)
    await aiohttp_server(app, port=port)
    return fed, mitm


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def test_mitm_passthrough_logs_in(mitm_fed: tuple[Fed, Mitm]) -> None:
    fed, _ = mitm_fed
    assert (await fed.login("alice")).status == 302


async def test_id_token_signed_by_another_key_with_the_providers_kid_is_refused(mitm_fed: tuple[Fed, Mitm]) -> None:
    fed, mitm = mitm_fed
    attacker = _rsa()
    mitm.rewrite = lambda t: jwt.encode(
        _claims(t), attacker, algorithm="RS256", headers={"kid": jwt.get_unverified_header(t)["kid"]}
    )
    resp = await fed.login("alice")
    assert resp.status == 502 and (await resp.json())["error"] == "idp_error"
    assert "refresh_token" not in resp.cookies
    assert await fed.client.server.app[STORE].list_users() == []


async def test_id_token_with_unknown_kid_refreshes_keys_once_then_is_refused(mitm_fed: tuple[Fed, Mitm]) -> None:
    fed, mitm = mitm_fed
    attacker = _rsa()
    mitm.rewrite = lambda t: jwt.encode(_claims(t), attacker, algorithm="RS256", headers={"kid": "attacker-kid"})
    for _ in range(3):
        resp = await fed.login("alice")
        assert resp.status == 502 and (await resp.json())["error"] == "idp_error"
    # One fetch, then at most one refresh within REFRESH_INTERVAL_S however many unknown kids come.
    assert mitm.jwks_fetches <= 2


async def test_provider_key_rotation_is_picked_up_on_unknown_kid(mitm_fed: tuple[Fed, Mitm], clock: FakeClock) -> None:
    fed, mitm = mitm_fed
    assert (await fed.login("alice")).status == 302
    fetches = mitm.jwks_fetches
    rotated = _rsa()
    mitm.extra_keys = [_public_jwk(rotated, "rotated-1")]
    mitm.rewrite = lambda t: jwt.encode(_claims(t), rotated, algorithm="RS256", headers={"kid": "rotated-1"})
    clock.advance(11)  # past the refresh rate limit
    resp = await fed.login("alice")
    assert resp.status == 302, await resp.text()
    assert mitm.jwks_fetches == fetches + 1


async def test_withdrawn_provider_key_stops_being_trusted_after_the_cache_age(
    mitm_fed: tuple[Fed, Mitm], clock: FakeClock
) -> None:
    fed, mitm = mitm_fed
    leaked = _rsa()
    mitm.extra_keys = [_public_jwk(leaked, "leaked-1")]

    def sign_with_leaked(token: str) -> str:
        # iat/exp from the gateway's clock: the token must fail for its key alone, not for its age
        now = int(clock())
        claims = {**_claims(token), "iat": now, "exp": now + 300}
        return jwt.encode(claims, leaked, algorithm="RS256", headers={"kid": "leaked-1"})

    mitm.rewrite = sign_with_leaked
    assert (await fed.login("alice")).status == 302
    mitm.extra_keys = []  # the provider withdraws the key
    clock.advance(3600)
    assert (await fed.login("alice")).status == 302  # within the cache age the held keys are used
    fetches = mitm.jwks_fetches
    clock.advance(KEYS_MAX_AGE_S)
    resp = await fed.login("alice")
    # Trusted until a restart before this stop (the cache was only refreshed for an unknown kid).
    assert resp.status == 502 and (await resp.json())["error"] == "idp_error"
    assert "refresh_token" not in resp.cookies and mitm.jwks_fetches > fetches


def test_jwks_cache_control_max_age_is_read() -> None:
    assert _max_age("public, max-age=600") == 600
    assert _max_age("max-age=\"60\", must-revalidate") == 60
    assert _max_age("no-store") == 0 and _max_age("private") is None and _max_age("max-age=soon") is None


@pytest.mark.parametrize("kind", ["none", "hs256-public-key", "hs256-client-secret"])
async def test_id_token_with_symmetric_or_no_algorithm_is_refused(mitm_fed: tuple[Fed, Mitm], kind: str) -> None:
    fed, mitm = mitm_fed

    def forge(token: str) -> str:
        claims, kid = _claims(token), jwt.get_unverified_header(token)["kid"]
        if kind == "none":
            return jwt.encode(claims, None, algorithm="none", headers={"kid": kid})
        secret = CLIENT_ID if kind == "hs256-client-secret" else json.dumps({"kid": kid})
        return jwt.encode(claims, secret.ljust(32, "x"), algorithm="HS256", headers={"kid": kid})

    mitm.rewrite = forge
    resp = await fed.login("alice")
    assert resp.status == 502 and (await resp.json())["error"] == "idp_error"


async def test_replayed_logout_token_cannot_end_a_later_session(
    make_fed: MakeFed, aiohttp_server: Any, clock: FakeClock
) -> None:
    # The provider's real logout token is recorded on its way to the gateway, then sent again.
    captured: list[str] = []
    target: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        captured.append(str(form["logout_token"]))
        async with aiohttp.ClientSession() as s, s.post(target[0], data=dict(form)) as r:
            return web.Response(status=r.status)

    app = web.Application()
    app.router.add_post("/bcl", record)
    recorder = await aiohttp_server(app)
    fed = await make_fed(backchannel_logout_uri=f"http://127.0.0.1:{recorder.port}/bcl")
    target.append(f"{fed.base}/auth/oidc/corp/backchannel-logout")
    assert (await fed.login("alice", keep=True)).status == 302
    await fed.browser.logout(fed.provider.issuer)
    assert len(captured) == 1 and (await fed.client.get("/api/whoami")).status == 401
    clock.advance(60)
    assert (await fed.login("alice")).status == 302
    for _ in range(2):
        replay = await fed.client.post("/auth/oidc/corp/backchannel-logout", data={"logout_token": captured[0]})
        # Accepted (200, ending nothing) before this stop; a logout token is accepted once.
        assert replay.status == 400, await replay.text()
        assert (await replay.json())["error"] == "invalid_request"
    assert (await fed.client.get("/api/whoami")).status == 200


# -- the pure rules, on keys made here --------------------------------------------------------------

ISS = "https://idp.example"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def signer() -> tuple[rsa.RSAPrivateKey, dict[str, jwt.PyJWK]]:
    key = _rsa()
    return key, {"k1": jwt.PyJWK(_public_jwk(key, "k1"))}


def _id_token(key: Any, **over: Any) -> str:
    claims = {"iss": ISS, "aud": CLIENT_ID, "sub": "u1", "iat": int(NOW), "exp": int(NOW) + 300, "nonce": "n-1"}
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256", headers={"kid": "k1"})


def _verify(token: str, keys: dict[str, jwt.PyJWK], nonce: str = "n-1") -> dict[str, Any]:
    return verify_id_token(token, keys, issuer=ISS, client_id=CLIENT_ID, nonce=nonce, now=NOW, leeway=0)


def test_verify_id_token_good_token_gives_claims(signer: Any) -> None:
    key, keys = signer
    assert _verify(_id_token(key), keys)["sub"] == "u1"


@pytest.mark.parametrize(
    ("over", "error"),
    [
        ({"iss": "https://other.example"}, IdpError),
        ({"aud": "someone-else"}, IdpError),
        ({"exp": int(NOW) - 1}, IdpError),
        ({"exp": None}, IdpError),
        ({"iat": None}, IdpError),
        ({"aud": [CLIENT_ID, "other"]}, IdpError),  # several audiences and no azp
        ({"aud": [CLIENT_ID, "other"], "azp": "other"}, IdpError),
        ({"azp": "other"}, IdpError),
        ({"nonce": "n-2"}, InvalidState),
        ({"nonce": None}, InvalidState),
        ({"sub": ""}, IdpError),
        # iat and nbf: fail on the code before this stop, which read iat only to see it was a number
        ({"iat": int(NOW) + 86400, "exp": int(NOW) + 86700}, IdpError),  # minted for tomorrow
        ({"iat": int(NOW) - 365 * 86400}, IdpError),  # a year old, with a far exp
        ({"nbf": int(NOW) + 86400}, IdpError),  # not valid until tomorrow
        ({"nbf": "soon"}, IdpError),
    ],
)
def test_verify_id_token_bad_claims_refused(signer: Any, over: dict[str, Any], error: type[Exception]) -> None:
    key, keys = signer
    with pytest.raises(error):
        _verify(_id_token(key, **over), keys)


def test_verify_id_token_iat_and_nbf_within_the_leeway_are_accepted(signer: Any) -> None:
    key, keys = signer
    token = _id_token(key, iat=int(NOW) + 20, nbf=int(NOW) + 20)
    assert verify_id_token(token, keys, issuer=ISS, client_id=CLIENT_ID, nonce="n-1", now=NOW, leeway=30)["sub"] == "u1"
    with pytest.raises(IdpError, match="future"):
        verify_id_token(token, keys, issuer=ISS, client_id=CLIENT_ID, nonce="n-1", now=NOW, leeway=10)


def test_verify_id_token_several_audiences_with_our_azp_accepted(signer: Any) -> None:
    key, keys = signer
    assert _verify(_id_token(key, aud=[CLIENT_ID, "other"], azp=CLIENT_ID), keys)["azp"] == CLIENT_ID


def test_verify_id_token_unknown_kid_is_keyerror_for_a_refresh(signer: Any) -> None:
    key, keys = signer
    token = jwt.encode({"iss": ISS}, key, algorithm="RS256", headers={"kid": "k9"})
    with pytest.raises(KeyError):
        _verify(token, keys)


def test_verify_id_token_algorithm_not_the_keys_refused(signer: Any) -> None:
    key, keys = signer
    token = jwt.encode({"iss": ISS, "aud": CLIENT_ID, "sub": "u", "exp": NOW + 9, "iat": NOW, "nonce": "n-1"},
                       key, algorithm="PS256", headers={"kid": "k1"})  # fmt: skip
    with pytest.raises(IdpError):
        _verify(token, keys)


def _logout(key: Any, **over: Any) -> str:
    claims: dict[str, Any] = {
        "iss": ISS, "aud": CLIENT_ID, "iat": int(NOW), "jti": "j1", "sub": "u1", "sid": "s1",
        "events": {BACKCHANNEL_EVENT: {}},
    }  # fmt: skip
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256", headers={"kid": "k1"})


def test_verify_logout_token_good_token(signer: Any) -> None:
    key, keys = signer
    got = verify_logout_token(_logout(key), keys, issuer=ISS, client_id=CLIENT_ID, now=NOW, leeway=0)
    assert (got.sub, got.sid, got.jti) == ("u1", "s1", "j1")
    only_sid = verify_logout_token(_logout(key, sub=None), keys, issuer=ISS, client_id=CLIENT_ID, now=NOW, leeway=0)
    assert only_sid.sub is None and only_sid.sid == "s1"


@pytest.mark.parametrize(
    "over",
    [
        {"events": None},
        {"events": {"http://schemas.openid.net/event/other": {}}},
        {"events": {BACKCHANNEL_EVENT: "yes"}},
        {"nonce": "n"},
        {"sub": None, "sid": None},
        {"jti": None},
        {"iat": None},
        {"iat": int(NOW) - 3600},
        {"iat": int(NOW) + 86400},  # a day ahead: accepted before this stop
        {"nbf": int(NOW) + 86400},
        {"nbf": "later"},
        {"exp": int(NOW) - 1},
        {"iss": "https://other.example"},
        {"aud": "someone-else"},
    ],
)
def test_verify_logout_token_bad_tokens_are_bad_requests(signer: Any, over: dict[str, Any]) -> None:
    key, keys = signer
    with pytest.raises(BadRequest):
        verify_logout_token(_logout(key, **over), keys, issuer=ISS, client_id=CLIENT_ID, now=NOW, leeway=0)


def test_verify_logout_token_hs256_refused(signer: Any) -> None:
    _, keys = signer
    token = jwt.encode({"iss": ISS, "aud": CLIENT_ID}, "x" * 32, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(BadRequest):
        verify_logout_token(token, keys, issuer=ISS, client_id=CLIENT_ID, now=NOW, leeway=0)


# The oauth2-proxy `rd` advisories: GHSA-qqxw-m5fj-f7gv (`/\evil`), GHSA-j7px-6hwj-hpjg (whitespace
# between the slashes), GHSA-5m6c-jp6f-2vcv (more encodings of the same), GHSA-4mf2-f3wh-gvf2
# (look-alike domains) — plus the encoded and absolute variants around them.
REFUSED = [
    "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example", "/\\/evil.example",
    "/\t/evil.example", "/\n/evil.example", "/\r/evil.example", "/ /evil.example", "/\x00/x",
    "/%2F%2Fevil.example", "/%2f/evil.example", "%2F%2Fevil.example", "/%5Cevil.example", "/%5cevil.example",
    "/%09/evil.example", "/%0A/evil.example", "/%0d/evil.example", "/%252F%252Fevil.example", "/%25252F/evil",
    "https://evil.example/", "http:evil.example", "https:/evil.example", "javascript:alert(1)",
    "data:text/html,x", "evil.example", "https://gateway.test.evil.example/", "//gateway.test@evil.example",
    "/%E0%A4%A", "/%ff", "", None, 42, "/" + "a" * 3000,
]  # fmt: skip
ALLOWED = ["/", "/api/x", "/api/x?y=1&z=%2F#frag", "/a/b%20c", "/caf%C3%A9", "/a//b", "/.well-known/x"]


@pytest.mark.parametrize("raw", REFUSED)
def test_safe_return_to_refuses_anything_off_origin(raw: Any) -> None:
    assert safe_return_to(raw) == "/"


@pytest.mark.parametrize("raw", ALLOWED)
def test_safe_return_to_keeps_relative_paths(raw: str) -> None:
    assert safe_return_to(raw) == raw


def test_flow_sealer_round_trip_tamper_and_expiry() -> None:
    sealer = FlowSealer(b"k" * 32)
    flow = new_flow(provider="corp", return_to="/x", redirect_uri="https://gw/cb")
    sealed = sealer.seal(flow, now=NOW)
    assert sealer.open(sealed, now=NOW + 599) == flow
    with pytest.raises(InvalidState):
        sealer.open(sealed, now=NOW + 601)
    with pytest.raises(InvalidState):
        sealer.open(sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB"), now=NOW)
    with pytest.raises(InvalidState):
        FlowSealer(b"o" * 32).open(sealed, now=NOW)
    with pytest.raises(InvalidState):
        sealer.open("not a token ✓", now=NOW)


def test_pkce_challenge_is_rfc7636_appendix_b() -> None:
    assert (
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


# -- [[identity_providers]] config ---------------------------------------------------------------------


def _parse(*providers: dict[str, Any]) -> Any:
    from pathlib import Path

    from gateway.config import parse_config

    return parse_config(
        {"tokens": {"secret": "s" * 40}, "identity_providers": list(providers)}, base=Path("."), source="t.toml", env={}
    )


GOOD = {"name": "corp", "issuer": "https://idp.example", "client_id": "gw", "client_secret": "shh"}


def test_config_identity_provider_defaults() -> None:
    idp = _parse(GOOD).identity_providers[0]
    assert (idp.scopes, idp.allowed_email_domains, idp.roles_claim, idp.create_users) == (
        ("openid", "email", "profile"), (), "", True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "client_secret"}, "identity_providers[0].client_secret: is required"),
        ({k: v for k, v in GOOD.items() if k != "issuer"}, "identity_providers[0].issuer: is required"),
        ({**GOOD, "name": "Corp"}, "identity_providers[0].name: must be 1 to 64 of [a-z0-9-]"),
        ({**GOOD, "issuer": "http://idp.example"}, "identity_providers[0].issuer: must be https://"),
        ({**GOOD, "scopes": ["email"]}, 'identity_providers[0].scopes: must include "openid"'),
        ({**GOOD, "allowed_email_domains": ["@"]}, "identity_providers[0].allowed_email_domains:"),
        ({**GOOD, "roles_claim": "my groups"}, "identity_providers[0].roles_claim: must be a claim name"),
        ({**GOOD, "create_users": "yes"}, "identity_providers[0].create_users: must be true or false"),
        ({**GOOD, "timeout": "0s"}, "identity_providers[0].timeout: must be greater than 0"),
        ({**GOOD, "client_scret": "x"}, "identity_providers[0].client_scret: unknown key"),
    ],
)
def test_config_identity_provider_errors_name_the_key(entry: dict[str, Any], message: str) -> None:
    from gateway.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _parse(entry)
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


def test_config_identity_provider_duplicate_name_is_an_error() -> None:
    from gateway.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _parse(GOOD, GOOD)
    assert "identity_providers[1].name: duplicates identity_providers[0].name 'corp'" in err.value.problems


def test_config_identity_provider_secret_is_masked() -> None:
    from gateway.config import masked

    shown = masked(_parse(GOOD))
    assert shown["identity_providers"][0]["client_secret"] == "***"  # type: ignore[index]
    assert "shh" not in repr(_parse(GOOD))
