"""Refresh tokens, successors, derived keys, key ids and KeyRing.adopt; pure unit tests, `now` injected.

Known-answer values are computed here independently (hashlib/hmac), because they are shared state: the
store keeps `hash_refresh_token` values and successor hashes, other instances (and the next release in a
rolling upgrade) must derive the same successors, kids and sealed-cookie keys from the same config.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.config import TokenConfig
from gateway.core.errors import TokenInvalid
from gateway.tokens.keyring import KeyRing, hash_refresh_token, new_refresh_token
from tests.support import OLD_SECRET, SECRET

NOW = 1_700_000_000
TTL = 300
REFRESH_SECRET = "refresh-secret-refresh-secret-0123456789"
URLSAFE = set(string.ascii_letters + string.digits + "-_")


def token_config(algorithm: str = "HS256", **overrides: Any) -> TokenConfig:
    base: dict[str, Any] = {"algorithm": algorithm, "access_ttl": timedelta(seconds=TTL), "leeway": timedelta(0)}
    if algorithm == "HS256":
        base["secret"] = SECRET
    base.update(overrides)
    return TokenConfig(**base)


def ed25519_ring(tmp_path: Path, **overrides: Any) -> tuple[KeyRing, ed25519.Ed25519PrivateKey]:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "ed25519.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return KeyRing(token_config("EdDSA", private_key_file=path, **overrides)), key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def expected_successor(seed: bytes, refresh_token: bytes) -> str:
    key = hmac.new(seed, b"gateway refresh-token successor", hashlib.sha256).digest()
    return b64(hmac.new(key, refresh_token, hashlib.sha256).digest())


def expected_derived_key(material: bytes, purpose: bytes) -> bytes:
    """RFC 5869 HKDF-SHA256 with no salt and a 32-byte output (one block), written out by hand."""
    prk = hmac.new(b"\x00" * 32, material, hashlib.sha256).digest()
    return hmac.new(prk, b"gateway derived key: " + purpose + b"\x01", hashlib.sha256).digest()


def issue(ring: KeyRing, now: float = NOW) -> str:
    token, _ = ring.issue_access_token(sub="user-1", sid="session-1", email="user@example.com", now=now)
    return token


# --- new_refresh_token / hash_refresh_token ------------------------------------------------------------------------


def test_new_refresh_token_is_256_bits_urlsafe_unpadded() -> None:
    tokens = {new_refresh_token() for _ in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        assert len(token) == 43 and set(token) <= URLSAFE
        assert len(base64.urlsafe_b64decode(token + "=")) == 32


def test_hash_refresh_token_is_sha256_hex_of_utf8() -> None:
    assert hash_refresh_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_refresh_token("r\u00e9fresh") == hashlib.sha256("r\u00e9fresh".encode()).hexdigest()


def test_hash_refresh_token_undecodable_client_bytes_hash_instead_of_raising() -> None:
    # A token read with surrogateescape (bytes that are not UTF-8) must hash, not raise a 500.
    assert hash_refresh_token("a\udcffb") == hashlib.sha256(b"a\xffb").hexdigest()


# --- successor -----------------------------------------------------------------------------------------------------


def test_successor_with_refresh_secret_is_keyed_hmac_of_token() -> None:
    ring = KeyRing(token_config(refresh_secret=REFRESH_SECRET))
    successor = ring.successor("refresh-1")
    assert successor == expected_successor(REFRESH_SECRET.encode(), b"refresh-1")
    assert len(successor) == 43 and set(successor) <= URLSAFE


def test_successor_with_refresh_secret_survives_signing_key_rotation() -> None:
    before = KeyRing(token_config(secret=OLD_SECRET, refresh_secret=REFRESH_SECRET))
    after = KeyRing(token_config(previous_secrets=(OLD_SECRET,), refresh_secret=REFRESH_SECRET))
    assert before.successor("refresh-1") == after.successor("refresh-1")


def test_successor_without_refresh_secret_is_keyed_by_hs256_secret() -> None:
    ring = KeyRing(token_config())
    assert ring.successor("refresh-1") == expected_successor(SECRET.encode(), b"refresh-1")
    assert KeyRing(token_config(secret=OLD_SECRET)).successor("refresh-1") != ring.successor("refresh-1")


def test_successor_without_refresh_secret_is_keyed_by_private_key(tmp_path: Path) -> None:
    ring, key = ed25519_ring(tmp_path)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert ring.successor("refresh-1") == expected_successor(der, b"refresh-1")


def test_successor_differs_per_token_and_is_stable() -> None:
    ring = KeyRing(token_config(refresh_secret=REFRESH_SECRET))
    assert ring.successor("refresh-1") == ring.successor("refresh-1") != ring.successor("refresh-2")
    assert ring.successor(ring.successor("refresh-1")) != ring.successor("refresh-1")


def test_successor_undecodable_client_bytes_derive_instead_of_raising() -> None:
    ring = KeyRing(token_config(refresh_secret=REFRESH_SECRET))
    assert ring.successor("a\udcffb") == expected_successor(REFRESH_SECRET.encode(), b"a\xffb")


# --- derived_key ---------------------------------------------------------------------------------------------------


def test_derived_key_hs256_is_hkdf_of_secret_per_purpose() -> None:
    ring = KeyRing(token_config())
    assert ring.derived_key(b"oidc flow") == expected_derived_key(SECRET.encode(), b"oidc flow")
    assert ring.derived_key(b"other") == expected_derived_key(SECRET.encode(), b"other") != ring.derived_key(b"oidc flow")


def test_derived_key_ignores_refresh_secret_and_follows_signing_key() -> None:
    with_refresh = KeyRing(token_config(refresh_secret=REFRESH_SECRET))
    assert with_refresh.derived_key(b"oidc flow") == KeyRing(token_config()).derived_key(b"oidc flow")
    assert KeyRing(token_config(secret=OLD_SECRET)).derived_key(b"oidc flow") != with_refresh.derived_key(b"oidc flow")


def test_derived_key_asymmetric_is_hkdf_of_private_key_der(tmp_path: Path) -> None:
    ring, key = ed25519_ring(tmp_path)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert ring.derived_key(b"oidc flow") == expected_derived_key(der, b"oidc flow")


# --- HS256 key ids -------------------------------------------------------------------------------------------------


def test_keyring_hs256_kid_is_truncated_hmac_of_secret() -> None:
    expected = hmac.new(SECRET.encode(), b"gateway key id", hashlib.sha256).hexdigest()[:16]
    ring = KeyRing(token_config(previous_secrets=(OLD_SECRET,)))
    assert ring.current_kid == expected
    assert jwt.get_unverified_header(issue(ring))["kid"] == expected


# --- adopt (config reload) -----------------------------------------------------------------------------------------


def test_keyring_adopt_takes_over_keys_lifetimes_and_derivations(tmp_path: Path) -> None:
    ring = KeyRing(token_config(secret=OLD_SECRET))
    other, _ = ed25519_ring(
        tmp_path, issuer="gateway-2", access_ttl=timedelta(seconds=60), leeway=timedelta(seconds=30), refresh_secret=REFRESH_SECRET
    )
    ring.adopt(other)
    assert (ring.algorithm, ring.cfg, ring.current_kid, ring.jwks()) == ("EdDSA", other.cfg, other.current_kid, other.jwks())
    token, expires_in = ring.issue_access_token(sub="u", sid="s", email="a@b.c", now=NOW)
    assert expires_in == 60
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "at+jwt", "kid": other.current_kid}
    assert other.verify_access_token(token, now=NOW).sub == "u"
    assert ring.verify_access_token(issue(other), now=NOW + 60 + 29).sub == "user-1"  # other's leeway
    assert ring.successor("refresh-1") == other.successor("refresh-1")
    assert ring.derived_key(b"oidc flow") == other.derived_key(b"oidc flow")


def test_keyring_adopt_drops_cached_verifications_of_old_keys() -> None:
    ring = KeyRing(token_config(secret=OLD_SECRET))
    old_token = issue(ring)
    assert ring.verify_access_token(old_token, now=NOW).sub == "user-1"
    ring.adopt(KeyRing(token_config()))
    with pytest.raises(TokenInvalid) as info:
        ring.verify_access_token(old_token, now=NOW)
    assert info.value.description == "the access token was signed by an unknown key"
    assert ring.verify_access_token(issue(ring), now=NOW).sub == "user-1"
