"""KeyRing refusals with their exact client-facing descriptions, the principal's defaults, the injected clock,
the verification cache's bound and the key-file errors; pure unit tests, `now` injected.

`str(exc)` of a TokenInvalid is the `error_description` the client gets (body and WWW-Authenticate), and a
ConfigError's problems are what the operator reads at startup, so both texts are asserted exactly.
"""

from __future__ import annotations

import base64
import hmac
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

import gateway.tokens.keyring
from gateway.config import TokenConfig
from gateway.core.errors import ConfigError, TokenExpired, TokenInvalid
from gateway.tokens.keyring import KeyRing, Principal
from tests.support import SECRET

NOW = 1_700_000_000
TTL = 300
# Far beyond the wall clock of any test run: times there are judged by the injected `now` or not at all.
FAR = 4_000_000_000


def token_config(algorithm: str = "HS256", **overrides: Any) -> TokenConfig:
    base: dict[str, Any] = {"algorithm": algorithm, "access_ttl": timedelta(seconds=TTL), "leeway": timedelta(0)}
    if algorithm == "HS256":
        base["secret"] = SECRET
    base.update(overrides)
    return TokenConfig(**base)


def claims(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "iss": "gateway", "aud": "api", "sub": "user-1", "sid": "session-1", "jti": "jti-1",
        "iat": NOW, "exp": NOW + TTL, "email": "user@example.com",
    }  # fmt: skip
    body.update(overrides)
    return body


def without(name: str) -> dict[str, Any]:
    body = claims()
    del body[name]
    return body


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256(body: Any, *, headers: dict[str, Any] | None = None) -> str:
    """An HS256 token with the gateway's typ and kid unless `headers` say otherwise; `body` may be any JSON."""
    header = {"alg": "HS256", "typ": "at+jwt", "kid": KeyRing(token_config()).current_kid, **(headers or {})}
    header = {k: v for k, v in header.items() if v is not None}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing_input}.{b64(hmac.digest(SECRET.encode(), signing_input.encode(), 'sha256'))}"


def client_claims(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "iss": "gateway", "aud": "api", "sub": "cl_1", "client_id": "cl_1", "scope": "a b", "jti": "jti-1",
        "iat": NOW, "exp": NOW + TTL,
    }  # fmt: skip
    body.update(overrides)
    return body


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(token_config())


# --- exact refusal texts -------------------------------------------------------------------------------------------

REFUSALS: list[tuple[str, Callable[[], str], str]] = [
    ("malformed", lambda: "not-a-jwt", "the access token is malformed"),
    ("other-alg", lambda: hs256(claims(), headers={"alg": "HS512"}), "the access token uses an algorithm this gateway does not accept"),
    ("typ", lambda: hs256(claims(), headers={"typ": "JWT"}), "the access token is not of type at+jwt"),
    ("kid", lambda: hs256(claims(), headers={"kid": "other"}), "the access token was signed by an unknown key"),
    ("audience", lambda: hs256(claims(aud="other")), "the access token is for another audience"),
    ("issuer", lambda: hs256(claims(iss="other")), "the access token is from another issuer"),
    *[(f"lacks-{name}", lambda name=name: hs256(without(name)), f"the access token lacks the {name} claim")  # type: ignore[misc]
      for name in ("exp", "iat", "sub", "jti", "iss", "aud", "sid")],
    ("signature", lambda: hs256(claims())[:-4] + "AAAA", "the access token signature is invalid"),
    ("payload-not-object", lambda: hs256([1, 2]), "the access token is invalid"),
    ("client-id-type", lambda: hs256(client_claims(client_id=5)), "the access token has malformed client_id or scope claims"),
    ("scope-type", lambda: hs256(client_claims(scope=["a"])), "the access token has malformed client_id or scope claims"),
    ("client-other-sub", lambda: hs256(client_claims(sub="user-1")), "the access token mixes a client with a user"),
    ("client-with-sid", lambda: hs256(client_claims(sid="session-1")), "the access token mixes a client with a user"),
    ("client-with-email", lambda: hs256(client_claims(email="a@b.c")), "the access token mixes a client with a user"),
    ("exp-type", lambda: hs256(claims(exp=str(NOW + TTL))), "the access token has non-integer times"),
    ("nbf-bool", lambda: hs256(claims(nbf=True)), "the access token has non-integer times"),
    ("sub-empty", lambda: hs256(claims(sub="")), "the access token has malformed claims"),
    ("jti-empty", lambda: hs256(claims(jti="")), "the access token has malformed claims"),
    ("email-type", lambda: hs256(claims(email=None)), "the access token has malformed claims"),
    ("sid-empty", lambda: hs256(claims(sid="")), "the access token has malformed claims"),
    ("sid-type", lambda: hs256(claims(sid=1)), "the access token has malformed claims"),
    ("amr-type", lambda: hs256(claims(amr="pwd")), "the access token has malformed amr or idp claims"),
    ("amr-member", lambda: hs256(claims(amr=["pwd", 1])), "the access token has malformed amr or idp claims"),
    ("idp-type", lambda: hs256(claims(idp=1)), "the access token has malformed amr or idp claims"),
    ("roles-type", lambda: hs256(claims(roles="admin")), "the access token has a malformed roles claim"),
    ("roles-member", lambda: hs256(claims(roles=["admin", 1])), "the access token has a malformed roles claim"),
    ("rv-type", lambda: hs256(claims(rv="1")), "the access token has a malformed rv claim"),
    ("rv-bool", lambda: hs256(claims(rv=True)), "the access token has a malformed rv claim"),
    ("nbf", lambda: hs256(claims(nbf=NOW + 1)), "the access token is not valid yet"),
    ("iat", lambda: hs256(claims(iat=NOW + 1)), "the access token was issued in the future"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "description"), [(m, d) for _, m, d in REFUSALS], ids=[i for i, _, _ in REFUSALS])
def test_verify_access_token_refusal_has_its_exact_description(ring: KeyRing, make: Callable[[], str], description: str) -> None:
    with pytest.raises(TokenInvalid) as info:
        ring.verify_access_token(make(), now=NOW)
    assert type(info.value) is TokenInvalid
    assert (str(info.value), info.value.description) == (description, description)


def test_verify_access_token_expired_has_its_exact_description_first_and_cached(ring: KeyRing) -> None:
    token = hs256(claims())
    with pytest.raises(TokenExpired) as first:
        ring.verify_access_token(token, now=NOW + TTL)
    assert ring.verify_access_token(token, now=NOW).sub == "user-1"  # now cached
    with pytest.raises(TokenExpired) as cached:
        ring.verify_access_token(token, now=NOW + TTL)
    assert first.value.description == cached.value.description == "the access token has expired"


# --- the principal -------------------------------------------------------------------------------------------------


def test_verify_access_token_minimal_user_token_gets_default_principal(ring: KeyRing) -> None:
    body = claims()
    del body["email"]
    principal = ring.verify_access_token(hs256(body), now=NOW)
    assert principal == Principal(sub="user-1", sid="session-1", email="", jti="jti-1", exp=NOW + TTL)
    assert (principal.amr, principal.idp, principal.roles, principal.rv, principal.client_id, principal.scopes) == (
        (), "", (), 0, "", ()
    )
    assert dict(principal.claims) == body


def test_verify_access_token_full_user_token_maps_every_claim(ring: KeyRing) -> None:
    body = claims(amr=["pwd", "otp"], idp="corp", roles=["ops", "admin"], rv=4, nbf=NOW)
    principal = ring.verify_access_token(hs256(body), now=NOW)
    assert principal == Principal(
        sub="user-1", sid="session-1", email="user@example.com", jti="jti-1", exp=NOW + TTL,
        amr=("pwd", "otp"), idp="corp", roles=("admin", "ops"), rv=4,
    )  # fmt: skip
    assert dict(principal.claims) == body


def test_verify_access_token_client_token_has_empty_session_and_split_scopes(ring: KeyRing) -> None:
    principal = ring.verify_access_token(hs256(client_claims(scope="b.read  a.write")), now=NOW)
    assert principal == Principal(sub="cl_1", sid="", email="", jti="jti-1", exp=NOW + TTL, client_id="cl_1", scopes=("b.read", "a.write"))
    assert principal.claims["sid"] == ""


def test_verify_ignoring_expiry_returns_the_principal_of_an_expired_token(ring: KeyRing) -> None:
    principal = ring.verify_ignoring_expiry(hs256(claims(iat=FAR, exp=FAR + 1, nbf=FAR)))
    assert (principal.sub, principal.sid, principal.jti, principal.exp) == ("user-1", "session-1", "jti-1", FAR + 1)


# --- the injected clock, not the wall clock ------------------------------------------------------------------------


def test_verify_access_token_times_beyond_the_wall_clock_judged_by_injected_now(ring: KeyRing) -> None:
    token = hs256(claims(iat=FAR, nbf=FAR, exp=FAR + TTL))
    assert ring.verify_access_token(token, now=FAR).exp == FAR + TTL


def test_verify_access_token_issued_exactly_now_passes(ring: KeyRing) -> None:
    assert ring.verify_access_token(hs256(claims(iat=NOW + 10, exp=NOW + 20)), now=NOW + 10).sub == "user-1"


# --- issuing -------------------------------------------------------------------------------------------------------


def test_issue_access_token_not_after_in_the_past_gives_zero_lifetime(ring: KeyRing) -> None:
    token, expires_in = ring.issue_access_token(sub="u", sid="s", email="e@x", now=NOW + 0.5, not_after=NOW - 100)
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})
    assert (body["iat"], body["exp"], expires_in) == (NOW, NOW, 0)


def test_issue_access_token_not_after_beyond_ttl_keeps_ttl(ring: KeyRing) -> None:
    token, expires_in = ring.issue_access_token(sub="u", sid="s", email="e@x", now=NOW, not_after=NOW + 10 * TTL + 0.9)
    assert (expires_in, ring.verify_access_token(token, now=NOW).exp) == (TTL, NOW + TTL)


def test_issue_access_token_idp_claim_only_for_federated_logins(ring: KeyRing) -> None:
    plain, _ = ring.issue_access_token(sub="u", sid="s", email="e@x", now=NOW)
    federated, _ = ring.issue_access_token(sub="u", sid="s", email="e@x", now=NOW, idp="corp", amr=("fed", "mfa"))
    opts = {"verify_exp": False, "verify_iat": False}
    assert "idp" not in jwt.decode(plain, SECRET, algorithms=["HS256"], audience="api", options=opts)
    body = jwt.decode(federated, SECRET, algorithms=["HS256"], audience="api", options=opts)
    assert (body["idp"], body["amr"]) == ("corp", ["fed", "mfa"])


def test_issue_client_token_header_and_times(ring: KeyRing) -> None:
    token, expires_in = ring.issue_client_token(client_id="cl_1", scopes=("a",), now=NOW + 0.7)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "at+jwt", "kid": ring.current_kid}
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})
    assert (body["iss"], body["aud"], body["iat"], body["exp"], body["scope"], expires_in) == ("gateway", "api", NOW, NOW + TTL, "a", TTL)
    assert uuid.UUID(hex=body["jti"]).version == 4
    other, _ = ring.issue_client_token(client_id="cl_1", scopes=("a",), now=NOW)
    assert jwt.decode(other, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})["jti"] != body["jti"]


def test_issue_access_token_defaults_password_login_no_roles_version_zero(ring: KeyRing) -> None:
    token, _ = ring.issue_access_token(sub="u", sid="s", email="e@x", now=NOW)
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})
    assert (body["amr"], body["roles"], body["rv"]) == (["pwd"], [], 0)


def test_issue_client_token_asymmetric_is_signed_with_the_ring_algorithm(tmp_path: Path) -> None:
    ring = KeyRing(token_config("EdDSA", private_key_file=_pem_private(tmp_path / "k.pem", ed25519.Ed25519PrivateKey.generate())))
    token, _ = ring.issue_client_token(client_id="cl_1", scopes=("a",), now=NOW)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "at+jwt", "kid": ring.current_kid}
    assert ring.verify_access_token(token, now=NOW).client_id == "cl_1"


def test_issue_tokens_carry_configured_issuer_audience_and_ttl() -> None:
    ring = KeyRing(token_config(issuer="gw-x", audience="api-x", access_ttl=timedelta(seconds=42)))
    user, user_ttl = ring.issue_access_token(sub="u", sid="s", email="e@x", now=NOW)
    client, client_ttl = ring.issue_client_token(client_id="cl", scopes=(), now=NOW)
    for token in (user, client):
        body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api-x", issuer="gw-x", options={"verify_exp": False, "verify_iat": False})
        assert body["exp"] == NOW + 42
    assert (user_ttl, client_ttl) == (42, 42)
    assert ring.verify_access_token(client, now=NOW).scopes == ()


# --- the verification cache ----------------------------------------------------------------------------------------


def _tokens(count: int, *, exp: int) -> list[str]:
    return [hs256(claims(jti=f"jti-{exp}-{i}", exp=exp)) for i in range(count)]


def test_verify_access_token_second_sight_is_served_from_the_cache(ring: KeyRing) -> None:
    # The cache is what keeps signature checks off the hot path: the same token gets the same Principal back.
    token = hs256(claims())
    first = ring.verify_access_token(token, now=NOW)
    assert ring.verify_access_token(token, now=NOW + 1) is first
    assert ring.verify_access_token(hs256(claims(jti="jti-2")), now=NOW) is not first


def test_verify_access_token_cache_never_exceeds_its_bound(ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.tokens.keyring, "_CACHE_MAX", 8)
    for i, token in enumerate(_tokens(20, exp=NOW + TTL)):
        assert ring.verify_access_token(token, now=NOW).jti == f"jti-{NOW + TTL}-{i}"
        assert len(ring._cache) <= 8


def test_verify_access_token_full_cache_drops_expired_entries_first(ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.tokens.keyring, "_CACHE_MAX", 8)
    short, long = _tokens(5, exp=NOW + 10), _tokens(3, exp=NOW + TTL)
    for token in short + long:
        ring.verify_access_token(token, now=NOW)
    newcomer = hs256(claims(jti="newcomer"))
    ring.verify_access_token(newcomer, now=NOW + 10)  # the short ones expire exactly now
    assert set(ring._cache) == {*long, newcomer}


def test_verify_access_token_full_cache_of_live_tokens_starts_over(ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.tokens.keyring, "_CACHE_MAX", 8)
    short, long = _tokens(4, exp=NOW + 10), _tokens(4, exp=NOW + TTL)
    for token in short + long:
        ring.verify_access_token(token, now=NOW)
    newcomer = hs256(claims(jti="newcomer"))
    ring.verify_access_token(newcomer, now=NOW + 10)  # half of the cache still live: not kept
    assert set(ring._cache) == {newcomer}


def test_verify_access_token_full_cache_with_leeway_keeps_entries_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.tokens.keyring, "_CACHE_MAX", 8)
    ring = KeyRing(token_config(leeway=timedelta(seconds=5)))
    in_leeway, gone = _tokens(3, exp=NOW + 10), _tokens(5, exp=NOW + 4)
    for token in in_leeway + gone:
        ring.verify_access_token(token, now=NOW)
    newcomer = hs256(claims(jti="newcomer"))
    ring.verify_access_token(newcomer, now=NOW + 9)  # exp + leeway: NOW+15 live, NOW+9 gone (on, not after)
    assert set(ring._cache) == {*in_leeway, newcomer}


# --- key files -----------------------------------------------------------------------------------------------------


def _pem_private(path: Path, key: Any) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def _pem_public(path: Path, key: Any) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _problems(cfg: TokenConfig) -> list[str]:
    with pytest.raises(ConfigError) as info:
        KeyRing(cfg)
    return info.value.problems


def test_keyring_key_file_problems_have_exact_texts(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    assert _problems(token_config("RS256", private_key_file=missing)) == [
        f"tokens.private_key_file: cannot read {missing}: No such file or directory"
    ]
    public = _pem_public(tmp_path / "pub.pem", ed25519.Ed25519PrivateKey.generate())
    assert _problems(token_config("EdDSA", private_key_file=public)) == [
        f"tokens.private_key_file: {public} is not an unencrypted PEM private key"
    ]
    p384 = _pem_private(tmp_path / "p384.pem", ec.generate_private_key(ec.SECP384R1()))
    assert _problems(token_config("ES256", private_key_file=p384)) == [f"tokens.private_key_file: {p384} holds an EC key that is not on P-256"]
    ec_key = _pem_private(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()))
    assert _problems(token_config("EdDSA", private_key_file=ec_key)) == [f"tokens.private_key_file: {ec_key} does not hold a key for EdDSA"]
    assert _problems(token_config("RS256")) == ["tokens.private_key_file: required for RS256"]


def test_keyring_previous_key_file_problems_have_exact_texts(tmp_path: Path) -> None:
    signing = _pem_private(tmp_path / "signing.pem", ed25519.Ed25519PrivateKey.generate())
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    missing = tmp_path / "missing.pub"
    ec_pub = _pem_public(tmp_path / "ec.pub", ec.generate_private_key(ec.SECP256R1()))
    expected = {
        garbage: f"tokens.previous_public_key_files: {garbage} is not a PEM key",
        missing: f"tokens.previous_public_key_files: cannot read {missing}: No such file or directory",
        ec_pub: f"tokens.previous_public_key_files: {ec_pub} does not hold a key for EdDSA",
    }
    for path, problem in expected.items():
        assert _problems(token_config("EdDSA", private_key_file=signing, previous_public_key_files=(path,))) == [problem]


def test_keyring_previous_key_given_as_private_pem_verifies_its_tokens(tmp_path: Path) -> None:
    old_key = ed25519.Ed25519PrivateKey.generate()
    old = KeyRing(token_config("EdDSA", private_key_file=_pem_private(tmp_path / "old.pem", old_key)))
    signing = _pem_private(tmp_path / "new.pem", ed25519.Ed25519PrivateKey.generate())
    ring = KeyRing(token_config("EdDSA", private_key_file=signing, previous_public_key_files=(tmp_path / "old.pem",)))
    token, _ = old.issue_access_token(sub="u", sid="s", email="e@x", now=NOW)
    assert ring.verify_access_token(token, now=NOW).sub == "u"
    jwks = ring.jwks()
    assert jwks is not None and [k["kid"] for k in jwks["keys"]] == [ring.current_kid, old.current_kid]
