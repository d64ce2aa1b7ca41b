"""The HS* algorithms that check a key once (gateway/tokens/jwt_algorithms.py) accept and refuse what PyJWT does."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import gateway.tokens.keyring  # noqa: F401 - installs the algorithms, as the gateway does
from gateway.tokens.jwt_algorithms import _MAX_KEYS, _CheckedOnceHMAC

SECRET = b"s" * 64  # long enough for HS512 too


def _public_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_der() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_installed_in_pyjwts_default_encoder_and_decoder() -> None:
    algorithms = jwt.api_jws._jws_global_obj._algorithms
    for name in ("HS256", "HS384", "HS512"):
        assert isinstance(algorithms[name], _CheckedOnceHMAC), name
    token = jwt.encode({"a": 1}, SECRET, algorithm="HS384")
    assert jwt.decode(token, SECRET, algorithms=["HS384"]) == {"a": 1}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, b"t" * 64, algorithms=["HS384"])


@pytest.mark.parametrize("make", [_public_pem, _public_der, lambda: b'{"kty":"oct","k":"c2VjcmV0"}'])
def test_an_asymmetric_or_jwk_key_is_refused_every_time(make) -> None:  # type: ignore[no-untyped-def]
    alg = _CheckedOnceHMAC(_CheckedOnceHMAC.SHA256)
    key = make()
    for _ in range(3):  # a refusal is never remembered as a prepared key
        with pytest.raises(jwt.InvalidKeyError):
            alg.prepare_key(key)
    assert alg._prepared == {}
    # An attacker's token naming HS256 with our RSA public key as the "secret" stays refused.
    with pytest.raises(jwt.InvalidKeyError):
        jwt.decode(jwt.encode({"a": 1}, SECRET, algorithm="HS256"), key, algorithms=["HS256"])


def test_a_secret_is_checked_once_and_gives_pyjwts_bytes() -> None:
    alg = _CheckedOnceHMAC(_CheckedOnceHMAC.SHA256)
    assert alg.prepare_key("text-secret-" * 3) == ("text-secret-" * 3).encode()
    assert alg.prepare_key(SECRET) == SECRET
    assert set(alg._prepared) == {"text-secret-" * 3, SECRET}
    with pytest.raises(jwt.InvalidKeyError):
        alg.prepare_key(b"")


def test_memory_is_bounded() -> None:
    alg = _CheckedOnceHMAC(_CheckedOnceHMAC.SHA256)
    for i in range(_MAX_KEYS + 10):
        assert alg.prepare_key(b"k%03d" % i + b"x" * 28) == b"k%03d" % i + b"x" * 28
    assert len(alg._prepared) == _MAX_KEYS
