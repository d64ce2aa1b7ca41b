"""Access-token JWTs (issue and verify) and opaque refresh tokens (mint, derive, hash); pure and clock-injected.

Must not: import aiohttp, touch the store, or read the clock itself (callers pass `now` in epoch seconds).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.config import TokenConfig
from gateway.core.errors import ConfigError, TokenExpired, TokenInvalid
from gateway.tokens.jwt_algorithms import install as _install_jwt_algorithms

__all__ = [
    "KeyRing",
    "Principal",
    "hash_refresh_token",
    "new_refresh_token",
]

# HS* keys are checked once per key, not once per token (see jwt_algorithms.py).
_install_jwt_algorithms()

_TYP = "at+jwt"
_REQUIRED = ["exp", "iat", "sub", "jti", "iss", "aud"]  # and `sid`, except in a machine client's token
# A verified token is cached by its exact text, so a forged token can never hit an entry.
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity a verified access token carries."""

    sub: str
    sid: str
    email: str
    jti: str
    exp: int
    # RFC 8176 authentication methods of the session (e.g. ("pwd",), ("pwd", "otp", "mfa")) and, for a
    # federated login, the identity provider's name.
    amr: tuple[str, ...] = ()
    idp: str = ""
    # Authorization: the user's roles (sorted) and their version when the token was issued (see grants.py).
    roles: tuple[str, ...] = ()
    rv: int = 0
    # A machine client's token (RFC 9068): its id (then also `sub`) and granted scopes; "" and () for users.
    client_id: str = ""
    scopes: tuple[str, ...] = ()
    # Every verified claim, for policies that match on claims; not compared, not printed.
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    sign: Any  # secret bytes or a private key object; None for verify-only keys
    verify: Any  # secret bytes or a public key object
    jwk: dict[str, str] | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_refresh_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """What the store keeps instead of the token; a fast hash suffices for 256-bit random input."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint, used as `kid` so a key's id follows from the key itself."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def _load_pem(path: Path, algorithm: str, *, private: bool) -> Any:
    where = "tokens.private_key_file" if private else "tokens.previous_public_key_files"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror}"]) from None
    key: Any
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        if private:
            raise ConfigError([f"{where}: {path} is not an unencrypted PEM private key"]) from None
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise ConfigError([f"{where}: {path} is not a PEM key"]) from None
    public = key.public_key() if hasattr(key, "public_key") else key
    expected = {
        "RS256": rsa.RSAPublicKey,
        "ES256": ec.EllipticCurvePublicKey,
        "EdDSA": ed25519.Ed25519PublicKey,
    }[algorithm]
    if not isinstance(public, expected):
        raise ConfigError([f"{where}: {path} does not hold a key for {algorithm}"])
    if algorithm == "RS256" and public.key_size < 2048:
        raise ConfigError([f"{where}: {path} holds an RSA key shorter than 2048 bits"])
    if algorithm == "ES256" and not isinstance(public.curve, ec.SECP256R1):
        raise ConfigError([f"{where}: {path} holds an EC key that is not on P-256"])
    return key


def _public_jwk(public: Any, algorithm: str) -> dict[str, str]:
    algo = jwt.get_algorithm_by_name(algorithm)
    jwk: dict[str, str] = algo.to_jwk(public, as_dict=True)  # type: ignore[call-overload]
    jwk.pop("d", None)
    jwk["kid"] = _thumbprint(jwk)
    jwk["alg"] = algorithm
    jwk["use"] = "sig"
    return jwk


class KeyRing:
    """The configured signing keys: the newest signs, all verify, `kid` picks one."""

    def __init__(self, cfg: TokenConfig) -> None:
        self.cfg = cfg
        self.algorithm = cfg.algorithm
        self._leeway = int(cfg.leeway.total_seconds())
        self._keys: dict[str, _Key] = {}
        self._cache: dict[str, Principal] = {}
        material: bytes
        if cfg.algorithm == "HS256":
            for secret in (*cfg.previous_secrets, cfg.secret):
                raw = secret.encode()
                kid = hmac.new(raw, b"gateway key id", hashlib.sha256).hexdigest()[:16]
                self._keys[kid] = _Key(kid=kid, sign=raw, verify=raw, jwk=None)
            self._current = self._keys[kid]
            material = cfg.secret.encode()
        else:
            for path in cfg.previous_public_key_files:
                key = _load_pem(path, cfg.algorithm, private=False)
                public = key.public_key() if hasattr(key, "public_key") else key
                jwk = _public_jwk(public, cfg.algorithm)
                self._keys[jwk["kid"]] = _Key(kid=jwk["kid"], sign=None, verify=public, jwk=jwk)
            if cfg.private_key_file is None:
                # Config validation catches this for TOML files, but a KeyRing built from a bare TokenConfig
                # must fail the same clear way, not with an assert (stripped under -O) or an AttributeError.
                raise ConfigError([f"tokens.private_key_file: required for {cfg.algorithm}"])
            private = _load_pem(cfg.private_key_file, cfg.algorithm, private=True)
            jwk = _public_jwk(private.public_key(), cfg.algorithm)
            self._current = _Key(kid=jwk["kid"], sign=private, verify=private.public_key(), jwk=jwk)
            self._keys[jwk["kid"]] = self._current
            material = private.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        # The successor key lets a just-rotated refresh token be answered again with the same successor
        # inside the grace window without the store ever holding a token in plaintext.
        seed = cfg.refresh_secret.encode() if cfg.refresh_secret else material
        self._material = material
        self._successor_key = hmac.new(seed, b"gateway refresh-token successor", hashlib.sha256).digest()

    def adopt(self, other: KeyRing) -> None:
        """Takes over another ring's keys in place (config reload); cached verifications are dropped."""
        self.cfg = other.cfg
        self.algorithm = other.algorithm
        self._leeway = other._leeway
        self._keys = other._keys
        self._current = other._current
        self._successor_key = other._successor_key
        self._material = other._material
        self._cache = {}

    def derived_key(self, purpose: bytes) -> bytes:
        """32 bytes for one `purpose` (HKDF-SHA256 over the current signing key), so features that need a
        key of their own (sealed login-flow cookies) need no extra configuration."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gateway derived key: " + purpose).derive(
            self._material
        )

    @property
    def current_kid(self) -> str:
        """The `kid` of the key that signs new tokens."""
        return self._current.kid

    def jwks(self) -> dict[str, list[dict[str, str]]] | None:
        """The public JWK Set, newest key first; None for HS256."""
        if self.algorithm == "HS256":
            return None
        keys = [k.jwk for k in reversed(self._keys.values()) if k.jwk is not None]
        return {"keys": keys}

    def successor(self, refresh_token: str) -> str:
        """The refresh token that replaces `refresh_token` on rotation (deterministic, unguessable)."""
        mac = hmac.new(self._successor_key, refresh_token.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return _b64(mac.digest())

    def issue_access_token(
        self,
        *,
        sub: str,
        sid: str,
        email: str,
        now: float,
        not_after: float | None = None,
        amr: tuple[str, ...] = ("pwd",),
        idp: str = "",
        roles: tuple[str, ...] = (),
        rv: int = 0,
    ) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds; `exp` never passes `not_after`."""
        iat = int(now)
        exp = iat + int(self.cfg.access_ttl.total_seconds())
        if not_after is not None:
            exp = max(iat, min(exp, int(not_after)))
        claims = {
            "iss": self.cfg.issuer,
            "aud": self.cfg.audience,
            "sub": sub,
            "sid": sid,
            "jti": uuid.uuid4().hex,
            "iat": iat,
            "exp": exp,
            "email": email,
            "amr": list(amr),
            "roles": sorted(roles),
            "rv": rv,
        }
        if idp:
            claims["idp"] = idp
        token = jwt.encode(claims, self._current.sign, algorithm=self.algorithm, headers={"kid": self._current.kid, "typ": _TYP})
        return token, exp - iat

    def issue_client_token(self, *, client_id: str, scopes: tuple[str, ...], now: float) -> tuple[str, int]:
        """A machine client's access token (RFC 9068): `sub` and `client_id` are the client, `scope`
        is space-separated; no session, no email, no refresh token."""
        iat = int(now)
        exp = iat + int(self.cfg.access_ttl.total_seconds())
        claims = {
            "iss": self.cfg.issuer,
            "aud": self.cfg.audience,
            "sub": client_id,
            "client_id": client_id,
            "scope": " ".join(scopes),
            "jti": uuid.uuid4().hex,
            "iat": iat,
            "exp": exp,
        }
        token = jwt.encode(claims, self._current.sign, algorithm=self.algorithm, headers={"kid": self._current.kid, "typ": _TYP})
        return token, exp - iat

    def verify_access_token(self, token: str, *, now: float) -> Principal:
        """The Principal of a genuine, current token; raises TokenInvalid or TokenExpired."""
        cached = self._cache.get(token)
        if cached is not None:
            if now >= cached.exp + self._leeway:  # same boundary as _verify (RFC 7519 4.1.4)
                raise TokenExpired("the access token has expired")
            return cached
        principal = self._verify(token, now=now)
        if len(self._cache) >= _CACHE_MAX:
            # Expired entries go first; if the cache is full of live tokens, start over rather than grow.
            live = {t: p for t, p in self._cache.items() if now < p.exp + self._leeway}
            self._cache = live if len(live) < _CACHE_MAX // 2 else {}
        self._cache[token] = principal
        return principal

    def verify_ignoring_expiry(self, token: str) -> Principal:
        """The Principal of a genuine token even if expired (for logout); raises TokenInvalid otherwise."""
        return self._verify(token, now=None)

    def _verify(self, token: str, *, now: float | None) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid("the access token is malformed") from exc
        if header.get("alg") != self.algorithm:
            raise TokenInvalid("the access token uses an algorithm this gateway does not accept")
        if header.get("typ") != _TYP:
            raise TokenInvalid("the access token is not of type at+jwt")
        key = self._keys.get(header.get("kid"))  # type: ignore[arg-type]
        if key is None:
            raise TokenInvalid("the access token was signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key.verify,
                algorithms=[self.algorithm],
                audience=self.cfg.audience,
                issuer=self.cfg.issuer,
                # exp/nbf/iat are checked below against the injected clock; pyjwt reads the wall clock.
                options={"require": _REQUIRED, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAudienceError as exc:
            raise TokenInvalid("the access token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenInvalid("the access token is from another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenInvalid(f"the access token lacks the {exc.claim} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenInvalid("the access token signature is invalid") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid("the access token is invalid") from exc
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
        client_id, scope = claims.get("client_id", ""), claims.get("scope", "")
        if not isinstance(client_id, str) or not isinstance(scope, str):
            raise TokenInvalid("the access token has malformed client_id or scope claims")
        if client_id:
            # RFC 9068 2.2: with no resource owner, `sub` is the client; a token naming both is not ours.
            if claims.get("sub") != client_id or "sid" in claims or "email" in claims:
                raise TokenInvalid("the access token mixes a client with a user")
            claims.setdefault("sid", "")
        elif "sid" not in claims:
            raise TokenInvalid("the access token lacks the sid claim")
        sub, sid, jti, email = claims.get("sub"), claims.get("sid"), claims.get("jti"), claims.get("email", "")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (exp, iat, nbf)):
            raise TokenInvalid("the access token has non-integer times")
        if not all(isinstance(v, str) and v for v in (sub, jti)) or not isinstance(email, str):
            raise TokenInvalid("the access token has malformed claims")
        if not isinstance(sid, str) or not (sid or client_id):
            raise TokenInvalid("the access token has malformed claims")
        amr, idp = claims.get("amr", []), claims.get("idp", "")
        if not isinstance(amr, list) or not all(isinstance(m, str) for m in amr) or not isinstance(idp, str):
            raise TokenInvalid("the access token has malformed amr or idp claims")
        roles, rv = claims.get("roles", []), claims.get("rv", 0)
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TokenInvalid("the access token has a malformed roles claim")
        if not isinstance(rv, int) or isinstance(rv, bool):
            raise TokenInvalid("the access token has a malformed rv claim")
        if now is not None:
            # RFC 7519 4.1.4: a token MUST NOT be accepted "on or after" exp, so now == exp (+ leeway) is expired.
            if now >= exp + self._leeway:
                raise TokenExpired("the access token has expired")
            if now + self._leeway < nbf:
                raise TokenInvalid("the access token is not valid yet")
            if now + self._leeway < iat:
                raise TokenInvalid("the access token was issued in the future")
        return Principal(
            sub=sub, sid=sid, email=email, jti=jti, exp=exp, amr=tuple(amr), idp=idp,  # type: ignore[arg-type]
            roles=tuple(sorted(roles)), rv=rv, client_id=client_id, scopes=tuple(scope.split()), claims=claims,
        )  # fmt: skip
