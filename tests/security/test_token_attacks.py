"""Forged, tampered and misconfigured access tokens against a real gateway in front of the real demo upstream."""

from __future__ import annotations

import base64
import hmac
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.app import create_app
from gateway.config import Config, TokenConfig
from gateway.core.errors import ConfigError
from gateway.http.keys import KEYRING
from gateway.tokens.keyring import KeyRing
from tests.support import OLD_SECRET, SECRET, FakeClock, mint

Client = TestClient[Any, Any]
MakeConfig = Callable[..., Config]
MakeGateway = Callable[..., Awaitable[Client]]

ASYMMETRIC = ("RS256", "ES256", "EdDSA")
ALGORITHMS = ("HS256", *ASYMMETRIC)
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


# --- helpers -------------------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def hand_made(header: dict[str, Any], body: dict[str, Any], sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact JWS assembled by hand (pyjwt refuses some of these); no `sign` means an empty signature."""
    signing_input = f"{segment(header)}.{segment(body)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()) if sign else b'')}"


def claims(now: float, **overrides: Any) -> dict[str, Any]:
    t = int(now)
    body: dict[str, Any] = {
        "iss": "gateway", "aud": "api", "sub": "user-1", "sid": "session-1", "jti": uuid.uuid4().hex,
        "iat": t, "exp": t + 300, "email": "user@example.com",
    }  # fmt: skip
    body.update(overrides)
    return body


def flip_signature_byte(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def new_private_key(algorithm: str) -> Any:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def write_private(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def write_public(path: Path, key: Any) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def token_table(algorithm: str, tmp_path: Path, key: Any = None, **extra: Any) -> dict[str, Any]:
    """A `[tokens]` table for `algorithm`; asymmetric ones get `key` (or a fresh one) as a PEM file under tmp_path."""
    if algorithm == "HS256":
        return {"algorithm": "HS256", **extra}
    path = write_private(tmp_path / f"{algorithm}-{uuid.uuid4().hex[:8]}.pem", key or new_private_key(algorithm))
    return {"algorithm": algorithm, "secret": "", "private_key_file": str(path), **extra}


def keyring(client: Client) -> KeyRing:
    ring: KeyRing = client.server.app[KEYRING]
    return ring


def issue(client: Client, clock: FakeClock) -> str:
    token, _ = keyring(client).issue_access_token(sub="user-1", sid="session-1", email="user@example.com", now=clock())
    return token


async def whoami(client: Client, token: str) -> Any:
    return await client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})


async def assert_passes(client: Client, token: str) -> None:
    resp = await whoami(client, token)
    assert resp.status == 200, await resp.text()
    seen = (await resp.json())["headers"]
    assert (seen["X-User-Id"], seen["X-User-Email"], seen["X-Session-Id"]) == ("user-1", "user@example.com", "session-1")
    assert "Authorization" not in seen


async def assert_refused(client: Client, token: str) -> None:
    resp = await whoami(client, token)
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["error"] == "invalid_token"
    assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


@pytest.fixture
async def hs_gateway(make_gateway: MakeGateway, make_config: MakeConfig) -> Client:
    return await make_gateway(make_config())


@pytest.fixture
def rsa_key() -> Any:
    return new_private_key("RS256")


@pytest.fixture
async def rs_gateway(make_gateway: MakeGateway, make_config: MakeConfig, tmp_path: Path, rsa_key: Any) -> Client:
    return await make_gateway(make_config(tokens=token_table("RS256", tmp_path, rsa_key)))


# --- genuine tokens pass -------------------------------------------------------------------------------------------


async def test_whoami_valid_token_passes_with_identity_headers(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_passes(hs_gateway, mint(now=clock()))


async def test_whoami_valid_token_replaces_client_identity_headers(hs_gateway: Client, clock: FakeClock) -> None:
    spoof = {"Authorization": f"Bearer {mint(now=clock())}", "X-User-Id": "admin", "X-User-Email": "root@x", "X-Session-Id": "s0"}
    resp = await hs_gateway.get("/api/whoami", headers=spoof)
    assert resp.status == 200
    seen = (await resp.json())["headers"]
    assert (seen["X-User-Id"], seen["X-User-Email"], seen["X-Session-Id"]) == ("user-1", "user@example.com", "session-1")


async def test_whoami_gateway_issued_token_passes(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_passes(hs_gateway, issue(hs_gateway, clock))


# --- alg none, wrong keys, key confusion, header tricks ------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_whoami_alg_none_is_refused(hs_gateway: Client, clock: FakeClock, alg: str) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": keyring(hs_gateway).current_kid}
    await assert_refused(hs_gateway, hand_made(header, claims(clock())))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_whoami_alg_none_rs256_is_refused(rs_gateway: Client, clock: FakeClock, alg: str) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": keyring(rs_gateway).current_kid}
    await assert_refused(rs_gateway, hand_made(header, claims(clock())))


async def test_whoami_other_secret_with_right_kid_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    forged = mint(secret="attacker-secret-attacker-secret-0123456789", kid=keyring(hs_gateway).current_kid, now=clock())
    await assert_refused(hs_gateway, forged)


async def test_whoami_unknown_kid_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_refused(hs_gateway, mint(kid="not-a-known-key", now=clock()))


async def test_whoami_hs512_with_right_secret_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    header = {"alg": "HS512", "typ": "at+jwt", "kid": keyring(hs_gateway).current_kid}
    await assert_refused(hs_gateway, hand_made(header, claims(clock()), lambda m: hmac.digest(SECRET.encode(), m, "sha512")))


@pytest.mark.parametrize("strip", [False, True], ids=["pem", "pem-stripped"])
async def test_whoami_hs256_signed_with_rsa_public_pem_is_refused(
    rs_gateway: Client, clock: FakeClock, rsa_key: Any, tmp_path: Path, strip: bool
) -> None:
    pem = write_public(tmp_path / "public.pem", rsa_key).read_bytes()
    secret = pem.strip() if strip else pem
    header = {"alg": "HS256", "typ": "at+jwt", "kid": keyring(rs_gateway).current_kid}
    await assert_refused(rs_gateway, hand_made(header, claims(clock()), lambda m: hmac.digest(secret, m, "sha256")))


@pytest.mark.parametrize("use_gateway_kid", [True, False])
async def test_whoami_embedded_jwk_header_is_refused(rs_gateway: Client, clock: FakeClock, use_gateway_kid: bool) -> None:
    attacker = new_private_key("RS256")
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    kid = keyring(rs_gateway).current_kid if use_gateway_kid else "attacker-key"
    forged = jwt.encode(claims(clock()), attacker, algorithm="RS256", headers={"typ": "at+jwt", "kid": kid, "jwk": jwk})
    await assert_refused(rs_gateway, forged)


@pytest.fixture
async def attacker_site(aiohttp_server: Any) -> tuple[TestServer, list[str], Any]:
    """An attacker's key server that records every fetch: (server, fetched paths, attacker's RSA key)."""
    key = new_private_key("RS256")
    jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "attacker-key", "alg": "RS256", "use": "sig"}
    fetched: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    server: TestServer = await aiohttp_server(app)
    return server, fetched, key


async def test_whoami_jku_x5u_to_attacker_keys_is_refused_without_fetching(
    rs_gateway: Client, clock: FakeClock, attacker_site: tuple[TestServer, list[str], Any]
) -> None:
    server, fetched, key = attacker_site
    base = f"http://127.0.0.1:{server.port}"
    headers = {"typ": "at+jwt", "kid": "attacker-key", "jku": f"{base}/jwks.json", "x5u": f"{base}/cert.pem"}
    await assert_refused(rs_gateway, jwt.encode(claims(clock()), key, algorithm="RS256", headers=headers))
    assert fetched == []


async def test_whoami_jku_x5u_on_genuine_token_are_ignored(
    rs_gateway: Client, clock: FakeClock, rsa_key: Any, attacker_site: tuple[TestServer, list[str], Any]
) -> None:
    server, fetched, _ = attacker_site
    base = f"http://127.0.0.1:{server.port}"
    headers = {"typ": "at+jwt", "kid": keyring(rs_gateway).current_kid, "jku": f"{base}/jwks.json", "x5u": f"{base}/c.pem"}
    await assert_passes(rs_gateway, jwt.encode(claims(clock()), rsa_key, algorithm="RS256", headers=headers))
    assert fetched == []


# --- claims --------------------------------------------------------------------------------------------------------


async def test_whoami_expired_token_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_refused(hs_gateway, mint(now=clock() - 301))


async def test_whoami_expired_beyond_leeway_is_refused(make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock) -> None:
    client = await make_gateway(make_config(tokens={"leeway": "30s"}))
    await assert_refused(client, mint(now=clock() - 300 - 31))


async def test_whoami_expired_within_leeway_passes(make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock) -> None:
    client = await make_gateway(make_config(tokens={"leeway": "30s"}))
    await assert_passes(client, mint(now=clock() - 300 - 20))


async def test_whoami_future_nbf_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_refused(hs_gateway, mint(now=clock(), nbf=int(clock()) + 60))


async def test_whoami_iat_in_future_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_refused(hs_gateway, mint(now=clock() + 120))


async def test_whoami_wrong_audience_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_refused(hs_gateway, mint(now=clock(), aud="billing"))


async def test_whoami_wrong_issuer_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_refused(hs_gateway, mint(now=clock(), iss="evil"))


@pytest.mark.parametrize("name", ["sid", "exp", "sub", "jti", "iat", "iss", "aud"])
async def test_whoami_missing_claim_is_refused(hs_gateway: Client, clock: FakeClock, name: str) -> None:
    await assert_refused(hs_gateway, mint(now=clock(), drop=(name,)))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt+x"])
async def test_whoami_wrong_typ_is_refused(hs_gateway: Client, clock: FakeClock, typ: str) -> None:
    await assert_refused(hs_gateway, mint(now=clock(), headers={"typ": typ}))


async def test_whoami_missing_typ_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    header = {"alg": "HS256", "kid": keyring(hs_gateway).current_kid}
    await assert_refused(hs_gateway, hand_made(header, claims(clock()), lambda m: hmac.digest(SECRET.encode(), m, "sha256")))


@pytest.mark.parametrize("exp", ["never", "9999999999", 9999999999.5, True, None])
async def test_whoami_non_integer_exp_is_refused(hs_gateway: Client, clock: FakeClock, exp: Any) -> None:
    await assert_refused(hs_gateway, mint(now=clock(), exp=exp))


@pytest.mark.parametrize(
    "garbage", ["x", "a.b", "a.b.c", "...", "e30.e30.", "e30.e30.e30", "%2e%2e", "eyJhbGciOiJIUzI1NiJ9", "A" * 4000]
)
async def test_whoami_garbage_token_is_refused(hs_gateway: Client, garbage: str) -> None:
    await assert_refused(hs_gateway, garbage)


async def test_whoami_extra_trailing_segment_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_refused(hs_gateway, mint(now=clock()) + ".e30")


async def test_whoami_extra_inner_segment_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    head, body, sig = mint(now=clock()).split(".")
    await assert_refused(hs_gateway, f"{head}.{body}.{body}.{sig}")


async def test_whoami_bad_bearer_with_good_cookie_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    resp = await hs_gateway.get(
        "/api/whoami", headers={"Authorization": "Bearer nonsense", "Cookie": f"access_token={mint(now=clock())}"}
    )
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_token"


async def test_whoami_token_in_query_is_not_accepted(hs_gateway: Client, clock: FakeClock) -> None:
    resp = await hs_gateway.get("/api/whoami", params={"access_token": mint(now=clock())})
    assert resp.status == 401
    assert (await resp.json())["error"] == "missing_token"


# --- rotation ------------------------------------------------------------------------------------------------------


async def test_whoami_hs256_previous_secret_passes_and_new_tokens_use_new_kid(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await make_gateway(make_config(tokens={"previous_secrets": [OLD_SECRET]}))
    old_token = mint(secret=OLD_SECRET, now=clock())
    await assert_passes(client, old_token)
    new_token = issue(client, clock)
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid == KeyRing(TokenConfig(secret=SECRET)).current_kid
    assert new_kid != jwt.get_unverified_header(old_token)["kid"]
    await assert_passes(client, new_token)


async def test_whoami_hs256_secret_no_longer_listed_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    await assert_refused(hs_gateway, mint(secret=OLD_SECRET, now=clock()))


async def test_whoami_rs256_previous_public_key_passes_and_new_tokens_use_new_kid(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock, tmp_path: Path
) -> None:
    old_key = new_private_key("RS256")
    old_ring_client = await make_gateway(make_config(tokens=token_table("RS256", tmp_path, old_key)))
    old_token = issue(old_ring_client, clock)
    previous = str(write_public(tmp_path / "old.pub", old_key))
    client = await make_gateway(make_config(tokens=token_table("RS256", tmp_path, previous_public_key_files=[previous])))
    await assert_passes(client, old_token)
    new_token = issue(client, clock)
    assert jwt.get_unverified_header(new_token)["kid"] == keyring(client).current_kid != jwt.get_unverified_header(old_token)["kid"]
    await assert_passes(client, new_token)
    await assert_refused(old_ring_client, new_token)


# --- each algorithm ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_whoami_each_algorithm_issued_token_passes(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock, tmp_path: Path, algorithm: str
) -> None:
    client = await make_gateway(make_config(tokens=token_table(algorithm, tmp_path)))
    token = issue(client, clock)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    await assert_passes(client, token)


@pytest.mark.parametrize("configured, other", list(itertools.permutations(ALGORITHMS, 2)))
async def test_whoami_token_of_other_algorithm_is_refused(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock, tmp_path: Path, configured: str, other: str
) -> None:
    # The token is sound in every other way: signed with a valid key for `other`, carrying the gateway's kid.
    client = await make_gateway(make_config(tokens=token_table(configured, tmp_path)))
    key = SECRET if other == "HS256" else new_private_key(other)
    token = jwt.encode(claims(clock()), key, algorithm=other, headers={"typ": "at+jwt", "kid": keyring(client).current_kid})
    await assert_refused(client, token)


# --- JWKS ----------------------------------------------------------------------------------------------------------


async def test_jwks_hs256_is_404_not_found(hs_gateway: Client) -> None:
    resp = await hs_gateway.get("/.well-known/jwks.json")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
async def test_jwks_asymmetric_publishes_public_key_that_verifies(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock, tmp_path: Path, algorithm: str
) -> None:
    client = await make_gateway(make_config(tokens=token_table(algorithm, tmp_path)))
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status == 200
    keys = (await resp.json())["keys"]
    assert len(keys) == 1
    jwk = keys[0]
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (keyring(client).current_kid, algorithm, "sig")
    assert not set(PRIVATE_JWK_MEMBERS) & set(jwk)
    token = issue(client, clock)
    body = jwt.decode(token, jwt.PyJWK(jwk), algorithms=[algorithm], audience="api", issuer="gateway")
    assert body["sub"] == "user-1"


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
async def test_jwks_with_previous_public_key_lists_both(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock, tmp_path: Path, algorithm: str
) -> None:
    old_key = new_private_key(algorithm)
    old_client = await make_gateway(make_config(tokens=token_table(algorithm, tmp_path, old_key)))
    old_token = issue(old_client, clock)
    previous = str(write_public(tmp_path / "old.pub", old_key))
    client = await make_gateway(make_config(tokens=token_table(algorithm, tmp_path, previous_public_key_files=[previous])))
    keys = (await (await client.get("/.well-known/jwks.json")).json())["keys"]
    kids = [k["kid"] for k in keys]
    assert kids == [keyring(client).current_kid, keyring(old_client).current_kid]
    for jwk in keys:
        assert not set(PRIVATE_JWK_MEMBERS) & set(jwk)
    old_jwk = keys[1]
    assert jwt.decode(old_token, jwt.PyJWK(old_jwk), algorithms=[algorithm], audience="api")["sub"] == "user-1"


# --- verification cache --------------------------------------------------------------------------------------------


async def test_whoami_cached_token_with_signature_byte_changed_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    token = mint(now=clock())
    await assert_passes(hs_gateway, token)
    await assert_refused(hs_gateway, flip_signature_byte(token))
    await assert_passes(hs_gateway, token)


async def test_whoami_cached_rs256_token_with_signature_byte_changed_is_refused(rs_gateway: Client, clock: FakeClock) -> None:
    token = issue(rs_gateway, clock)
    await assert_passes(rs_gateway, token)
    await assert_refused(rs_gateway, flip_signature_byte(token))


async def test_whoami_cached_token_past_exp_is_refused(hs_gateway: Client, clock: FakeClock) -> None:
    token = mint(now=clock())
    await assert_passes(hs_gateway, token)
    clock.advance(299)
    await assert_passes(hs_gateway, token)
    clock.advance(2)
    await assert_refused(hs_gateway, token)


async def test_whoami_cached_token_past_leeway_is_refused(
    make_gateway: MakeGateway, make_config: MakeConfig, clock: FakeClock
) -> None:
    client = await make_gateway(make_config(tokens={"leeway": "30s"}))
    token = mint(now=clock())
    await assert_passes(client, token)
    clock.advance(300 + 29)
    await assert_passes(client, token)
    clock.advance(2)
    await assert_refused(client, token)


# --- key configuration errors at startup ---------------------------------------------------------------------------


async def test_create_app_rs256_without_private_key_file_is_config_error(make_config: MakeConfig) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(tokens={"algorithm": "RS256", "secret": ""})
    assert any(p.startswith("tokens.private_key_file:") for p in info.value.problems)


@pytest.mark.parametrize(
    "key",
    [lambda: ec.generate_private_key(ec.SECP256R1()), lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024)],
    ids=["ec-key", "rsa-1024"],
)
async def test_create_app_rs256_unusable_key_is_config_error(make_config: MakeConfig, tmp_path: Path, key: Any) -> None:
    cfg = make_config(tokens={"algorithm": "RS256", "secret": "", "private_key_file": str(write_private(tmp_path / "k.pem", key()))})
    with pytest.raises(ConfigError) as info:
        create_app(cfg)
    assert any(p.startswith("tokens.private_key_file:") for p in info.value.problems)
