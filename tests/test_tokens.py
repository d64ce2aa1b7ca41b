"""KeyRing unit tests: issuing and verifying access tokens, keys, rotation, JWKS and config errors; pure, `now` injected."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.config import TokenConfig
from gateway.core.errors import ConfigError, TokenExpired, TokenInvalid
from gateway.tokens.keyring import KeyRing, Principal
from tests.support import OLD_SECRET, SECRET, build_config

NOW = 1_700_000_000
TTL = 300
ASYMMETRIC = ("RS256", "ES256", "EdDSA")
ALGORITHMS = ("HS256", *ASYMMETRIC)
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


# --- helpers -------------------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "iss": "gateway", "aud": "api", "sub": "user-1", "sid": "session-1", "jti": uuid.uuid4().hex,
        "iat": NOW, "exp": NOW + TTL, "email": "user@example.com",
    }  # fmt: skip
    body.update(overrides)
    return body


def new_private_key(algorithm: str) -> Any:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(algorithm)


def write_private(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def write_public(path: Path, key: Any) -> Path:
    public = key.public_key() if hasattr(key, "public_key") else key
    path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def token_config(algorithm: str = "HS256", **overrides: Any) -> TokenConfig:
    base: dict[str, Any] = {"algorithm": algorithm, "access_ttl": timedelta(seconds=TTL), "leeway": timedelta(0)}
    if algorithm == "HS256":
        base["secret"] = SECRET
    base.update(overrides)
    return TokenConfig(**base)


def ring_for(algorithm: str, tmp_path: Path, **overrides: Any) -> KeyRing:
    """A KeyRing for `algorithm`; asymmetric keys are fresh PEM files under tmp_path."""
    if algorithm != "HS256" and "private_key_file" not in overrides:
        overrides["private_key_file"] = write_private(tmp_path / f"{algorithm}-{uuid.uuid4().hex}.pem", new_private_key(algorithm))
    return KeyRing(token_config(algorithm, **overrides))


def issue(ring: KeyRing, now: float = NOW) -> str:
    token, _ = ring.issue_access_token(sub="user-1", sid="session-1", email="user@example.com", now=now)
    return token


def hs256(body: dict[str, Any], *, secret: str = SECRET, headers: dict[str, Any] | None = None) -> str:
    """An HS256 token with the gateway's typ and the kid of `secret` unless `headers` say otherwise."""
    hdr: dict[str, Any] = {"typ": "at+jwt", "kid": KeyRing(token_config(secret=secret)).current_kid}
    hdr.update(headers or {})
    return jwt.encode(body, secret, algorithm="HS256", headers=hdr)


def hand_made(header: dict[str, Any], body: dict[str, Any], sign: Any = None) -> str:
    """A compact JWS assembled by hand; `sign(signing_input) -> bytes`, or an empty signature."""
    signing_input = f"{segment(header)}.{segment(body)}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{b64(signature)}"


def flip_signature_byte(token: str) -> str:
    """The same token with one byte in the middle of its signature changed (still canonical base64url)."""
    head, body, sig = token.split(".")
    raw = bytearray(unb64(sig))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def rfc7638(public: Any) -> str:
    """The RFC 7638 thumbprint computed from the key's numbers, independently of the gateway's code."""

    def uint(n: int, size: int | None = None) -> str:
        return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))

    if isinstance(public, rsa.RSAPublicKey):
        nums = public.public_numbers()
        members = {"e": uint(nums.e), "kty": "RSA", "n": uint(nums.n)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        nums = public.public_numbers()
        members = {"crv": "P-256", "kty": "EC", "x": uint(nums.x, 32), "y": uint(nums.y, 32)}
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        members = {"crv": "Ed25519", "kty": "OKP", "x": b64(raw)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canonical.encode()).digest())


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(token_config())


# --- issue and verify ----------------------------------------------------------------------------------------------


def test_issue_access_token_amr_and_idp_round_trip_to_principal(ring: KeyRing) -> None:
    token, _ = ring.issue_access_token(sub="u", sid="s", email="a@b.c", now=NOW, amr=("fed",), idp="corp")
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})
    assert (body["amr"], body["idp"]) == (["fed"], "corp")
    principal = ring.verify_access_token(token, now=NOW)
    assert (principal.amr, principal.idp) == (("fed",), "corp")


@pytest.mark.parametrize("amr", ["pwd", [1], {"a": 1}, ["pwd", None]])
def test_verify_access_token_malformed_amr_is_invalid(ring: KeyRing, amr: object) -> None:
    claims = {"iss": "gateway", "aud": "api", "sub": "u", "sid": "s", "jti": "j", "iat": NOW, "exp": NOW + 60, "amr": amr}
    token = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": ring.current_kid, "typ": "at+jwt"})
    with pytest.raises(TokenInvalid, match="amr"):
        ring.verify_access_token(token, now=NOW)


def test_issue_access_token_hs256_has_typ_kid_and_all_claims(ring: KeyRing) -> None:
    token, expires_in = ring.issue_access_token(sub="u-7", sid="s-7", email="a@b.c", now=NOW + 0.9)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "at+jwt", "kid": ring.current_kid}
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})
    assert set(body) == {"iss", "aud", "sub", "sid", "jti", "iat", "exp", "email", "amr", "roles", "rv"}
    assert (body["iss"], body["aud"], body["sub"], body["sid"], body["email"]) == ("gateway", "api", "u-7", "s-7", "a@b.c")
    assert body["amr"] == ["pwd"]
    assert (body["iat"], body["exp"], expires_in) == (NOW, NOW + TTL, TTL)


def test_issue_access_token_twice_gets_distinct_jti(ring: KeyRing) -> None:
    first, second = issue(ring), issue(ring)
    assert ring.verify_access_token(first, now=NOW).jti != ring.verify_access_token(second, now=NOW).jti


def test_issue_access_token_not_after_caps_exp(ring: KeyRing) -> None:
    token, expires_in = ring.issue_access_token(sub="u", sid="s", email="e@x", now=NOW, not_after=NOW + 60)
    assert expires_in == 60
    assert ring.verify_access_token(token, now=NOW).exp == NOW + 60


def test_verify_access_token_genuine_returns_principal(ring: KeyRing) -> None:
    principal = ring.verify_access_token(issue(ring), now=NOW)
    assert isinstance(principal, Principal)
    assert (principal.sub, principal.sid, principal.email, principal.exp) == ("user-1", "session-1", "user@example.com", NOW + TTL)


# --- time claims ---------------------------------------------------------------------------------------------------


def test_verify_access_token_one_second_before_exp_passes(ring: KeyRing) -> None:
    assert ring.verify_access_token(issue(ring), now=NOW + TTL - 1).sub == "user-1"


def test_verify_access_token_at_exp_is_expired(ring: KeyRing) -> None:
    # RFC 7519 4.1.4: the token MUST NOT be accepted on or after exp.
    with pytest.raises(TokenExpired):
        ring.verify_access_token(issue(ring), now=NOW + TTL)


def test_verify_access_token_within_leeway_passes() -> None:
    ring = KeyRing(token_config(leeway=timedelta(seconds=30)))
    assert ring.verify_access_token(issue(ring), now=NOW + TTL + 29).sub == "user-1"


def test_verify_access_token_beyond_leeway_is_expired() -> None:
    ring = KeyRing(token_config(leeway=timedelta(seconds=30)))
    with pytest.raises(TokenExpired):
        ring.verify_access_token(issue(ring), now=NOW + TTL + 30)


def test_verify_access_token_expired_error_is_invalid_token() -> None:
    assert issubclass(TokenExpired, TokenInvalid)
    assert TokenExpired.code == "invalid_token"


def test_verify_access_token_future_nbf_is_invalid(ring: KeyRing) -> None:
    with pytest.raises(TokenInvalid, match="not valid yet"):
        ring.verify_access_token(hs256(claims(nbf=NOW + 10)), now=NOW)


def test_verify_access_token_nbf_within_leeway_passes() -> None:
    ring = KeyRing(token_config(leeway=timedelta(seconds=30)))
    assert ring.verify_access_token(hs256(claims(nbf=NOW + 20)), now=NOW).sub == "user-1"


def test_verify_access_token_nbf_reached_passes(ring: KeyRing) -> None:
    assert ring.verify_access_token(hs256(claims(nbf=NOW)), now=NOW).sub == "user-1"


def test_verify_access_token_iat_in_future_is_invalid(ring: KeyRing) -> None:
    with pytest.raises(TokenInvalid, match="future"):
        ring.verify_access_token(hs256(claims(iat=NOW + 60, exp=NOW + 360)), now=NOW)


def test_verify_access_token_iat_in_future_within_leeway_passes() -> None:
    ring = KeyRing(token_config(leeway=timedelta(seconds=30)))
    assert ring.verify_access_token(hs256(claims(iat=NOW + 20)), now=NOW).sub == "user-1"


@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [str(NOW + TTL), float(NOW + TTL) + 0.5, True, None, [NOW + TTL]])
def test_verify_access_token_non_integer_time_is_invalid(ring: KeyRing, name: str, value: Any) -> None:
    with pytest.raises(TokenInvalid) as info:
        ring.verify_access_token(hs256(claims(**{name: value})), now=NOW)
    assert not isinstance(info.value, TokenExpired)


def test_verify_ignoring_expiry_expired_genuine_token_passes(ring: KeyRing) -> None:
    token = issue(ring, now=NOW - 10 * TTL)
    assert ring.verify_ignoring_expiry(token).sid == "session-1"


def test_verify_ignoring_expiry_forged_token_is_invalid(ring: KeyRing) -> None:
    with pytest.raises(TokenInvalid):
        ring.verify_ignoring_expiry(flip_signature_byte(issue(ring, now=NOW - 10 * TTL)))


# --- claims --------------------------------------------------------------------------------------------------------


def test_verify_access_token_wrong_audience_is_invalid(ring: KeyRing) -> None:
    with pytest.raises(TokenInvalid, match="audience"):
        ring.verify_access_token(hs256(claims(aud="other-api")), now=NOW)


def test_verify_access_token_wrong_issuer_is_invalid(ring: KeyRing) -> None:
    with pytest.raises(TokenInvalid, match="issuer"):
        ring.verify_access_token(hs256(claims(iss="someone-else")), now=NOW)


@pytest.mark.parametrize("name", ["exp", "iat", "sub", "sid", "jti", "iss", "aud"])
def test_verify_access_token_missing_claim_is_invalid(ring: KeyRing, name: str) -> None:
    body = claims()
    del body[name]
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(hs256(body), now=NOW)


@pytest.mark.parametrize("name", ["sub", "sid", "jti"])
@pytest.mark.parametrize("value", ["", 42, None])
def test_verify_access_token_malformed_identity_claim_is_invalid(ring: KeyRing, name: str, value: Any) -> None:
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(hs256(claims(**{name: value})), now=NOW)


def test_verify_access_token_non_string_email_is_invalid(ring: KeyRing) -> None:
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(hs256(claims(email=["a@b.c"])), now=NOW)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt ", "", None, "dpop+jwt"])
def test_verify_access_token_wrong_typ_is_invalid(ring: KeyRing, typ: Any) -> None:
    with pytest.raises(TokenInvalid, match="at\\+jwt"):
        ring.verify_access_token(hs256(claims(), headers={"typ": typ}), now=NOW)


def test_verify_access_token_missing_typ_is_invalid(ring: KeyRing) -> None:
    token = hand_made({"alg": "HS256", "kid": ring.current_kid}, claims(), lambda m: hmac.digest(SECRET.encode(), m, "sha256"))
    with pytest.raises(TokenInvalid, match="at\\+jwt"):
        ring.verify_access_token(token, now=NOW)


def test_verify_access_token_hand_made_genuine_token_passes(ring: KeyRing) -> None:
    # Control for the hand-made attack tokens below: the same construction with the right key and header passes.
    header = {"alg": "HS256", "typ": "at+jwt", "kid": ring.current_kid}
    token = hand_made(header, claims(), lambda m: hmac.digest(SECRET.encode(), m, "sha256"))
    assert ring.verify_access_token(token, now=NOW).sub == "user-1"


# --- forged and malformed tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("with_kid", [True, False])
def test_verify_access_token_alg_none_is_invalid(ring: KeyRing, alg: str, with_kid: bool) -> None:
    header: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if with_kid:
        header["kid"] = ring.current_kid
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(hand_made(header, claims()), now=NOW)


def test_verify_access_token_missing_alg_is_invalid(ring: KeyRing) -> None:
    header = {"typ": "at+jwt", "kid": ring.current_kid}
    token = hand_made(header, claims(), lambda m: hmac.digest(SECRET.encode(), m, "sha256"))
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(token, now=NOW)


def test_verify_access_token_other_secret_with_right_kid_is_invalid(ring: KeyRing) -> None:
    forged = hs256(claims(), secret="attacker-secret-attacker-secret-0123456789", headers={"kid": ring.current_kid})
    with pytest.raises(TokenInvalid, match="signature"):
        ring.verify_access_token(forged, now=NOW)


@pytest.mark.parametrize("kid", ["no-such-key", "", "../../../dev/null"])
def test_verify_access_token_unknown_kid_is_invalid(ring: KeyRing, kid: str) -> None:
    with pytest.raises(TokenInvalid, match="unknown key"):
        ring.verify_access_token(hs256(claims(), headers={"kid": kid}), now=NOW)


def test_verify_access_token_missing_kid_is_invalid(ring: KeyRing) -> None:
    token = hand_made({"alg": "HS256", "typ": "at+jwt"}, claims(), lambda m: hmac.digest(SECRET.encode(), m, "sha256"))
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(token, now=NOW)


@pytest.mark.parametrize("kid", [["x"], {"k": 1}, 7, None])
def test_verify_access_token_non_string_kid_is_invalid(ring: KeyRing, kid: Any) -> None:
    token = hand_made({"alg": "HS256", "typ": "at+jwt", "kid": kid}, claims(), lambda m: hmac.digest(SECRET.encode(), m, "sha256"))
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(token, now=NOW)


@pytest.mark.parametrize("alg, digest", [("HS384", "sha384"), ("HS512", "sha512")])
def test_verify_access_token_other_hmac_alg_with_right_secret_is_invalid(ring: KeyRing, alg: str, digest: str) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": ring.current_kid}
    token = hand_made(header, claims(), lambda m: hmac.digest(SECRET.encode(), m, digest))
    with pytest.raises(TokenInvalid, match="algorithm"):
        ring.verify_access_token(token, now=NOW)


@pytest.mark.parametrize("strip", [False, True])
def test_verify_access_token_hs256_signed_with_rsa_public_pem_is_invalid(tmp_path: Path, strip: bool) -> None:
    key = new_private_key("RS256")
    ring = KeyRing(token_config("RS256", private_key_file=write_private(tmp_path / "k.pem", key)))
    pem = write_public(tmp_path / "pub.pem", key).read_bytes()
    secret = pem.strip() if strip else pem
    header = {"alg": "HS256", "typ": "at+jwt", "kid": ring.current_kid}
    forged = hand_made(header, claims(), lambda m: hmac.digest(secret, m, "sha256"))
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(forged, now=NOW)


@pytest.mark.parametrize("kid_is_gateways", [True, False])
def test_verify_access_token_embedded_jwk_header_is_ignored(tmp_path: Path, kid_is_gateways: bool) -> None:
    ring = ring_for("RS256", tmp_path)
    attacker = new_private_key("RS256")
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    kid = ring.current_kid if kid_is_gateways else rfc7638(attacker.public_key())
    forged = jwt.encode(claims(), attacker, algorithm="RS256", headers={"typ": "at+jwt", "kid": kid, "jwk": jwk})
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(forged, now=NOW)


def test_verify_access_token_jku_x5u_headers_on_genuine_token_are_ignored(tmp_path: Path) -> None:
    ring = ring_for("RS256", tmp_path)
    private = serialization.load_pem_private_key(ring.cfg.private_key_file.read_bytes(), None)  # type: ignore[union-attr]
    extra = {"typ": "at+jwt", "kid": ring.current_kid, "jku": "http://127.0.0.1:1/jwks.json", "x5u": "http://127.0.0.1:1/cert.pem"}
    token = jwt.encode(claims(), private, algorithm="RS256", headers=extra)  # type: ignore[arg-type]
    assert ring.verify_access_token(token, now=NOW).sub == "user-1"


def test_verify_access_token_jku_to_attacker_keys_is_invalid(tmp_path: Path) -> None:
    ring = ring_for("RS256", tmp_path)
    attacker = new_private_key("RS256")
    headers = {"typ": "at+jwt", "kid": rfc7638(attacker.public_key()), "jku": "http://127.0.0.1:1/jwks.json", "x5u": "http://127.0.0.1:1/c.pem"}
    with pytest.raises(TokenInvalid, match="unknown key"):
        ring.verify_access_token(jwt.encode(claims(), attacker, algorithm="RS256", headers=headers), now=NOW)


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b", "a.b.c", "..", "...", "....", "Bearer", "null", "e30.e30.", "e30.e30.e30", "\u00e9.\u00e9.\u00e9", "x" * 5000],
)
def test_verify_access_token_garbage_is_invalid(ring: KeyRing, garbage: str) -> None:
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(garbage, now=NOW)


def test_verify_access_token_header_not_an_object_is_invalid(ring: KeyRing) -> None:
    token = f"{b64(b'[]')}.{segment(claims())}.{b64(b'x' * 32)}"
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(token, now=NOW)


def test_verify_access_token_payload_not_an_object_is_invalid(ring: KeyRing) -> None:
    header = {"alg": "HS256", "typ": "at+jwt", "kid": ring.current_kid}
    signing_input = f"{segment(header)}.{b64(b'[1,2]')}"
    token = f"{signing_input}.{b64(hmac.digest(SECRET.encode(), signing_input.encode(), 'sha256'))}"
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(token, now=NOW)


def test_verify_access_token_extra_trailing_segment_is_invalid(ring: KeyRing) -> None:
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(issue(ring) + ".e30", now=NOW)


def test_verify_access_token_extra_inner_segment_is_invalid(ring: KeyRing) -> None:
    head, body, sig = issue(ring).split(".")
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(f"{head}.{body}.e30.{sig}", now=NOW)


def test_verify_access_token_junk_after_signature_is_invalid(ring: KeyRing) -> None:
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(issue(ring) + "!", now=NOW)


def test_verify_access_token_swapped_payload_is_invalid(ring: KeyRing) -> None:
    head, _, sig = issue(ring).split(".")
    with pytest.raises(TokenInvalid, match="signature"):
        ring.verify_access_token(f"{head}.{segment(claims(sub='admin'))}.{sig}", now=NOW)


# --- verification cache --------------------------------------------------------------------------------------------


def test_verify_access_token_cached_then_signature_byte_changed_is_invalid(ring: KeyRing) -> None:
    token = issue(ring)
    assert ring.verify_access_token(token, now=NOW).sub == "user-1"
    with pytest.raises(TokenInvalid, match="signature"):
        ring.verify_access_token(flip_signature_byte(token), now=NOW)
    assert ring.verify_access_token(token, now=NOW + 1).sub == "user-1"


def test_verify_access_token_cached_then_past_exp_is_expired(ring: KeyRing) -> None:
    token = issue(ring)
    ring.verify_access_token(token, now=NOW)
    with pytest.raises(TokenExpired):
        ring.verify_access_token(token, now=NOW + TTL)


def test_verify_access_token_cached_then_past_leeway_is_expired() -> None:
    ring = KeyRing(token_config(leeway=timedelta(seconds=30)))
    token = issue(ring)
    ring.verify_access_token(token, now=NOW)
    assert ring.verify_access_token(token, now=NOW + TTL + 29).sub == "user-1"
    with pytest.raises(TokenExpired):
        ring.verify_access_token(token, now=NOW + TTL + 30)


# --- rotation ------------------------------------------------------------------------------------------------------


def test_keyring_hs256_previous_secret_still_verifies() -> None:
    old_ring = KeyRing(token_config(secret=OLD_SECRET))
    ring = KeyRing(token_config(previous_secrets=(OLD_SECRET,)))
    assert ring.verify_access_token(issue(old_ring), now=NOW).sub == "user-1"


def test_keyring_hs256_rotation_new_tokens_carry_new_kid() -> None:
    old_kid = KeyRing(token_config(secret=OLD_SECRET)).current_kid
    ring = KeyRing(token_config(previous_secrets=(OLD_SECRET,)))
    assert ring.current_kid == KeyRing(token_config()).current_kid != old_kid
    token = issue(ring)
    assert jwt.get_unverified_header(token)["kid"] == ring.current_kid
    jwt.decode(token, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, OLD_SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})


def test_keyring_hs256_dropped_secret_is_invalid() -> None:
    old_ring = KeyRing(token_config(secret=OLD_SECRET))
    with pytest.raises(TokenInvalid, match="unknown key"):
        KeyRing(token_config()).verify_access_token(issue(old_ring), now=NOW)


def test_keyring_hs256_kid_does_not_reveal_secret(ring: KeyRing) -> None:
    assert SECRET not in ring.current_kid and ring.current_kid not in SECRET
    assert KeyRing(token_config(secret=OLD_SECRET)).current_kid != ring.current_kid


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_keyring_asymmetric_previous_public_key_still_verifies(tmp_path: Path, algorithm: str) -> None:
    old_key = new_private_key(algorithm)
    old_ring = KeyRing(token_config(algorithm, private_key_file=write_private(tmp_path / "old.pem", old_key)))
    ring = ring_for(algorithm, tmp_path, previous_public_key_files=(write_public(tmp_path / "old.pub", old_key),))
    assert ring.verify_access_token(issue(old_ring), now=NOW).sub == "user-1"
    assert ring.current_kid != old_ring.current_kid
    new_token = issue(ring)
    assert jwt.get_unverified_header(new_token)["kid"] == ring.current_kid
    with pytest.raises(TokenInvalid, match="unknown key"):
        old_ring.verify_access_token(new_token, now=NOW)


def test_keyring_rs256_dropped_key_is_invalid(tmp_path: Path) -> None:
    old_ring = ring_for("RS256", tmp_path)
    with pytest.raises(TokenInvalid, match="unknown key"):
        ring_for("RS256", tmp_path).verify_access_token(issue(old_ring), now=NOW)


# --- algorithms ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keyring_algorithm_round_trip_passes(tmp_path: Path, algorithm: str) -> None:
    ring = ring_for(algorithm, tmp_path)
    token = issue(ring)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"], header["kid"]) == (algorithm, "at+jwt", ring.current_kid)
    assert ring.verify_access_token(token, now=NOW).sub == "user-1"


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_keyring_asymmetric_kid_is_rfc7638_thumbprint(tmp_path: Path, algorithm: str) -> None:
    key = new_private_key(algorithm)
    ring = KeyRing(token_config(algorithm, private_key_file=write_private(tmp_path / "k.pem", key)))
    assert ring.current_kid == rfc7638(key.public_key())


def _sign_other(other: str) -> tuple[Any, str]:
    """A signing key valid for `other` and the pyjwt name to sign with."""
    if other == "HS256":
        return SECRET, "HS256"
    return new_private_key(other), other


@pytest.mark.parametrize("configured, other", list(itertools.permutations(ALGORITHMS, 2)))
def test_keyring_token_of_other_algorithm_is_invalid(tmp_path: Path, configured: str, other: str) -> None:
    ring = ring_for(configured, tmp_path)
    key, alg = _sign_other(other)
    token = jwt.encode(claims(), key, algorithm=alg, headers={"typ": "at+jwt", "kid": ring.current_kid})
    with pytest.raises(TokenInvalid, match="algorithm"):
        ring.verify_access_token(token, now=NOW)


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256"])
def test_keyring_rs256_same_key_other_rsa_alg_is_invalid(tmp_path: Path, alg: str) -> None:
    ring = ring_for("RS256", tmp_path)
    private = serialization.load_pem_private_key(ring.cfg.private_key_file.read_bytes(), None)  # type: ignore[union-attr]
    token = jwt.encode(claims(), private, algorithm=alg, headers={"typ": "at+jwt", "kid": ring.current_kid})  # type: ignore[arg-type]
    with pytest.raises(TokenInvalid, match="algorithm"):
        ring.verify_access_token(token, now=NOW)


# --- JWKS ----------------------------------------------------------------------------------------------------------


def test_jwks_hs256_is_none(ring: KeyRing) -> None:
    assert ring.jwks() is None


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_jwks_asymmetric_publishes_public_key_only(tmp_path: Path, algorithm: str) -> None:
    ring = ring_for(algorithm, tmp_path)
    jwks = ring.jwks()
    assert jwks is not None and len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (ring.current_kid, algorithm, "sig")
    assert not set(PRIVATE_JWK_MEMBERS) & set(jwk)
    key = jwt.PyJWK(jwk)
    body = jwt.decode(issue(ring, now=NOW), key, algorithms=[algorithm], audience="api", options={"verify_exp": False, "verify_iat": False})
    assert body["sub"] == "user-1"


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_jwks_with_previous_key_lists_both_newest_first(tmp_path: Path, algorithm: str) -> None:
    old_key = new_private_key(algorithm)
    ring = ring_for(algorithm, tmp_path, previous_public_key_files=(write_public(tmp_path / "old.pub", old_key),))
    jwks = ring.jwks()
    assert jwks is not None
    assert [k["kid"] for k in jwks["keys"]] == [ring.current_kid, rfc7638(old_key.public_key())]
    for jwk in jwks["keys"]:
        assert not set(PRIVATE_JWK_MEMBERS) & set(jwk)


def test_jwks_previous_key_given_as_private_pem_publishes_public_only(tmp_path: Path) -> None:
    old_key = new_private_key("RS256")
    ring = ring_for("RS256", tmp_path, previous_public_key_files=(write_private(tmp_path / "old-private.pem", old_key),))
    jwks = ring.jwks()
    assert jwks is not None and len(jwks["keys"]) == 2
    for jwk in jwks["keys"]:
        assert not set(PRIVATE_JWK_MEMBERS) & set(jwk)


# --- key configuration errors --------------------------------------------------------------------------------------


def _problems(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return excinfo.value.problems


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_keyring_asymmetric_without_private_key_file_is_config_error(algorithm: str) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing(token_config(algorithm))
    assert any(p.startswith("tokens.private_key_file:") for p in _problems(info))


def test_parse_config_rs256_without_private_key_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(tmp_path, "http://127.0.0.1:1", tokens={"algorithm": "RS256", "secret": ""})
    assert any(p.startswith("tokens.private_key_file:") for p in _problems(info))


@pytest.mark.parametrize(
    "algorithm, key",
    [
        ("RS256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("RS256", lambda: ed25519.Ed25519PrivateKey.generate()),
        ("ES256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP384R1())),
        ("EdDSA", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", lambda: ed448.Ed448PrivateKey.generate()),
    ],
    ids=["rs256-ec", "rs256-ed25519", "es256-rsa", "es256-p384", "eddsa-ec", "eddsa-ed448"],
)
def test_keyring_wrong_key_type_is_config_error(tmp_path: Path, algorithm: str, key: Any) -> None:
    path = write_private(tmp_path / "k.pem", key())
    with pytest.raises(ConfigError) as info:
        KeyRing(token_config(algorithm, private_key_file=path))
    assert any(p.startswith("tokens.private_key_file:") and str(path) in p for p in _problems(info))


def test_keyring_short_rsa_key_is_config_error(tmp_path: Path) -> None:
    path = write_private(tmp_path / "k.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ConfigError) as info:
        KeyRing(token_config("RS256", private_key_file=path))
    assert any(p.startswith("tokens.private_key_file:") and "2048" in p for p in _problems(info))


def test_keyring_public_key_as_private_key_file_is_config_error(tmp_path: Path) -> None:
    path = write_public(tmp_path / "k.pub", new_private_key("RS256"))
    with pytest.raises(ConfigError) as info:
        KeyRing(token_config("RS256", private_key_file=path))
    assert any(p.startswith("tokens.private_key_file:") for p in _problems(info))


def test_keyring_encrypted_private_key_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(
        new_private_key("RS256").private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
    )
    with pytest.raises(ConfigError) as info:
        KeyRing(token_config("RS256", private_key_file=path))
    assert any(p.startswith("tokens.private_key_file:") for p in _problems(info))


def test_keyring_unreadable_private_key_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing(token_config("RS256", private_key_file=tmp_path / "missing.pem"))
    assert any(p.startswith("tokens.private_key_file:") for p in _problems(info))


def test_keyring_wrong_previous_public_key_type_is_config_error(tmp_path: Path) -> None:
    previous = write_public(tmp_path / "old.pub", new_private_key("ES256"))
    with pytest.raises(ConfigError) as info:
        ring_for("RS256", tmp_path, previous_public_key_files=(previous,))
    assert any(p.startswith("tokens.previous_public_key_files:") for p in _problems(info))


def test_keyring_garbage_previous_public_key_is_config_error(tmp_path: Path) -> None:
    previous = tmp_path / "old.pub"
    previous.write_text("not a key\n")
    with pytest.raises(ConfigError) as info:
        ring_for("RS256", tmp_path, previous_public_key_files=(previous,))
    assert any(p.startswith("tokens.previous_public_key_files:") for p in _problems(info))


def test_issue_access_token_roles_sorted_and_version_round_trip(ring: KeyRing) -> None:
    token, _ = ring.issue_access_token(sub="u", sid="s", email="a@b.c", now=NOW, roles=("ops", "admin"), rv=3)
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})
    assert (body["roles"], body["rv"]) == (["admin", "ops"], 3)
    principal = ring.verify_access_token(token, now=NOW)
    assert (principal.roles, principal.rv) == (("admin", "ops"), 3)


@pytest.mark.parametrize(("name", "value"), [("roles", "admin"), ("roles", [1]), ("roles", {"admin": 1}), ("rv", "1"), ("rv", True), ("rv", 1.5)])
def test_verify_access_token_malformed_roles_or_rv_is_invalid(ring: KeyRing, name: str, value: object) -> None:
    claims = {"iss": "gateway", "aud": "api", "sub": "u", "sid": "s", "jti": "j", "iat": NOW, "exp": NOW + 60, name: value}
    token = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": ring.current_kid, "typ": "at+jwt"})
    with pytest.raises(TokenInvalid, match=name):
        ring.verify_access_token(token, now=NOW)


def test_issue_client_token_claims_per_rfc9068(ring: KeyRing) -> None:
    token, expires_in = ring.issue_client_token(client_id="cl_1", scopes=("billing.read", "billing.write"), now=NOW)
    body = jwt.decode(token, SECRET, algorithms=["HS256"], audience="api", options={"verify_exp": False, "verify_iat": False})
    assert set(body) == {"iss", "aud", "sub", "client_id", "scope", "jti", "iat", "exp"}
    assert (body["sub"], body["client_id"], body["scope"], expires_in) == ("cl_1", "cl_1", "billing.read billing.write", TTL)
    p = ring.verify_access_token(token, now=NOW)
    assert (p.sub, p.client_id, p.scopes, p.sid, p.email, p.roles) == ("cl_1", "cl_1", ("billing.read", "billing.write"), "", "", ())


@pytest.mark.parametrize(
    "extra",
    [{"client_id": "cl_1", "sub": "user-1"}, {"client_id": "cl_1", "sub": "cl_1", "email": "a@b.c"}, {"client_id": 5}, {"scope": ["a"]}],
)
def test_verify_access_token_client_claims_mixed_or_malformed_is_invalid(ring: KeyRing, extra: dict[str, Any]) -> None:
    body = {"iss": "gateway", "aud": "api", "sub": "cl_1", "jti": "j", "iat": NOW, "exp": NOW + 60, "sid": "s", **extra}
    if "email" not in extra and extra.get("client_id") == "cl_1":
        body.pop("sid")
    token = jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": ring.current_kid, "typ": "at+jwt"})
    with pytest.raises(TokenInvalid):
        ring.verify_access_token(token, now=NOW)


def test_verify_access_token_user_token_without_sid_is_invalid(ring: KeyRing) -> None:
    body = {"iss": "gateway", "aud": "api", "sub": "u", "jti": "j", "iat": NOW, "exp": NOW + 60}
    token = jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": ring.current_kid, "typ": "at+jwt"})
    with pytest.raises(TokenInvalid, match="sid"):
        ring.verify_access_token(token, now=NOW)
