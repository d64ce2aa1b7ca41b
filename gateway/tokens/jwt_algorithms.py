"""PyJWT's HMAC algorithms with their key check done once per key instead of once per token.

PyJWT's `HMACAlgorithm.prepare_key` refuses a secret that looks like an asymmetric key (PEM, SSH, DER
public key or certificate, JWK JSON) on every `encode` and `decode`: it tries to parse the secret as
DER twice and as JSON, each failure an exception. Measured here at about 60 µs of a 140 µs HS256
`jwt.encode` (timeit on a loaded 2-core machine), on every refresh and every first sight of an access
token. The check is a pure function of the key bytes, so its result is remembered per distinct key:
the same check still refuses the same keys, once. The gateway's secrets are a handful (a key ring),
so the memory is bounded by `_MAX_KEYS`; keys beyond it are checked every time, as PyJWT does.

Must not: change what is accepted or refused, or hold anything but prepared HMAC secrets.
"""

from __future__ import annotations

import threading
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm

__all__ = ["install"]

_MAX_KEYS = 64


class _CheckedOnceHMAC(HMACAlgorithm):
    def __init__(self, hash_alg: Any) -> None:
        super().__init__(hash_alg)
        self._prepared: dict[bytes | str, bytes] = {}
        self._lock = threading.Lock()

    def prepare_key(self, key: str | bytes) -> bytes:
        # Keyed by the exact value and its type: b"k" and "k" are the same secret but checked apart.
        try:
            return self._prepared[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key, which super() refuses as PyJWT does
            pass
        prepared = super().prepare_key(key)  # raises for a key that is not an HMAC secret: not remembered
        with self._lock:
            if len(self._prepared) < _MAX_KEYS:
                self._prepared[key] = prepared
        return prepared


_installed = False


def install() -> None:
    """Replaces HS256/HS384/HS512 in PyJWT's default (module-level) encoder and decoder; idempotent."""
    global _installed
    if _installed:
        return
    for name, hash_alg in (("HS256", HMACAlgorithm.SHA256), ("HS384", HMACAlgorithm.SHA384), ("HS512", HMACAlgorithm.SHA512)):
        jwt.unregister_algorithm(name)
        jwt.register_algorithm(name, _CheckedOnceHMAC(hash_alg))
    _installed = True
