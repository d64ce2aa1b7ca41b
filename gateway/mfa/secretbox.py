"""The keys of the second factors: AES-GCM for TOTP secrets at rest, HMAC for recovery codes and challenges.

Both keys come from `mfa.encryption_key` through HKDF, or, when it is unset, from the token signing key
(`tokens.secret`, or the private key for asymmetric algorithms), so no extra key is required. Changing
that source makes stored TOTP secrets and recovery codes unreadable: an operator who rotates token keys
sets `mfa.encryption_key` first.

Must not: import aiohttp, log or repr a key or a plaintext secret, or implement a cipher itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.config import MfaConfig, TokenConfig
from gateway.core.errors import StoreError

__all__ = ["SecretBox", "UnreadableSecret"]

_VERSION = "v1."


class UnreadableSecret(StoreError):
    """A stored secret does not decrypt with the current key (the key or its source changed)."""

    code = "mfa_secret_unreadable"


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"gateway second factors", info=info).derive(ikm)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SecretBox:
    """Seals and opens TOTP secrets (bound to their user id) and makes keyed digests of codes."""

    __slots__ = ("_aead", "_mac_key")

    def __init__(self, ikm: bytes) -> None:
        self._aead = AESGCM(_hkdf(ikm, b"totp secrets v1"))
        self._mac_key = _hkdf(ikm, b"code digests v1")

    def __repr__(self) -> str:
        return "SecretBox(...)"

    @classmethod
    def from_config(cls, mfa: MfaConfig, tokens: TokenConfig) -> SecretBox:
        """The box for this config; reads the private key file for asymmetric token algorithms."""
        if mfa.encryption_key:
            return cls(b"mfa.encryption_key:" + mfa.encryption_key.encode())
        if tokens.algorithm == "HS256":
            return cls(b"tokens.secret:" + tokens.secret.encode())
        assert tokens.private_key_file is not None  # config validation requires it
        key = serialization.load_pem_private_key(tokens.private_key_file.read_bytes(), password=None)
        # DER of the key, not the file's bytes: re-wrapping the same PEM must not lose every secret.
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(b"tokens.private_key:" + der)

    def seal(self, plaintext: str, *, user_id: str) -> str:
        """`v1.` + base64url(nonce || ciphertext+tag); the user id is associated data: moved rows fail."""
        nonce = os.urandom(12)
        return _VERSION + _b64(nonce + self._aead.encrypt(nonce, plaintext.encode(), user_id.encode()))

    def open(self, sealed: str, *, user_id: str) -> str:
        """The plaintext; UnreadableSecret when the key changed or the value was tampered with."""
        if not sealed.startswith(_VERSION):
            raise UnreadableSecret("a stored TOTP secret has an unknown format")
        try:
            raw = base64.urlsafe_b64decode(sealed[len(_VERSION) :] + "=" * (-len(sealed) % 4))
            return self._aead.decrypt(raw[:12], raw[12:], user_id.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise UnreadableSecret(
                "a stored TOTP secret does not decrypt: was mfa.encryption_key or the token key changed?"
            ) from exc

    def digest(self, value: str) -> str:
        """A keyed digest (HMAC-SHA256): a stolen database alone cannot test guesses of a recovery code."""
        return hmac.new(self._mac_key, value.encode(), hashlib.sha256).hexdigest()
