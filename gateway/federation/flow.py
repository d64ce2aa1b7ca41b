"""The rules of one OpenID Connect login and of a back-channel logout, apart from HTTP: the sealed
login-flow cookie, PKCE, `return_to`, and the checks on id_tokens and logout tokens.

Must not: import aiohttp or do I/O; take the time from anywhere but its `now` arguments; accept a
token signed with a symmetric or "none" algorithm, or with a key the provider did not publish.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import jwt
from cryptography.fernet import Fernet, InvalidToken

from gateway.core.errors import BadRequest, IdpError, InvalidState

__all__ = [
    "BACKCHANNEL_EVENT",
    "FLOW_TTL_S",
    "LOGOUT_JTI_KEEP_S",
    "FlowSealer",
    "FlowState",
    "LogoutClaims",
    "authorization_url",
    "check_state",
    "new_flow",
    "pkce_challenge",
    "safe_return_to",
    "verify_id_token",
    "verify_logout_token",
]

FLOW_TTL_S = 600  # a login at the provider must finish within this
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_MAX_AGE_S = 300
# A logout token's jti is remembered this long past its iat (or until its exp, if later): it is
# refused as too old well before it is forgotten.
LOGOUT_JTI_KEEP_S = 600
# An id_token comes straight from the token endpoint, so its iat is "now": this much older is refused.
ID_TOKEN_MAX_AGE_S = 300
# Asymmetric JWS algorithms only: an HS* token would be "signed" with a secret the provider shares
# with every client (or, worse, with its own public key), and "none" is not a signature.
_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_MAX_RETURN_TO = 2048


@dataclass(frozen=True, slots=True)
class FlowState:
    """What the browser carries (sealed) between the login redirect and the provider's callback."""

    id: str
    provider: str
    state: str
    nonce: str
    verifier: str
    return_to: str
    redirect_uri: str


def new_flow(*, provider: str, return_to: str, redirect_uri: str) -> FlowState:
    """Fresh random state, nonce and PKCE verifier (43+ characters, RFC 7636 §4.1) for one login."""
    return FlowState(
        id=secrets.token_urlsafe(16),
        provider=provider,
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(48),
        return_to=return_to,
        redirect_uri=redirect_uri,
    )


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge: BASE64URL(SHA256(verifier)) without padding (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


def authorization_url(endpoint: str, *, client_id: str, scopes: tuple[str, ...], flow: FlowState) -> str:
    """The provider's authorization endpoint with an authorization-code request for `flow`."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": flow.redirect_uri,
        "scope": " ".join(scopes),
        "state": flow.state,
        "nonce": flow.nonce,
        "code_challenge": pkce_challenge(flow.verifier),
        "code_challenge_method": "S256",
    }
    joiner = "&" if urlsplit(endpoint).query else "?"
    return endpoint + joiner + urlencode(params)


class FlowSealer:
    """Seals a FlowState into a cookie value (Fernet: AES-CBC + HMAC, timestamped) and opens it again."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, flow: FlowState, *, now: float) -> str:
        """The cookie value for `flow`, stamped with `now`."""
        data = json.dumps(asdict(flow), separators=(",", ":")).encode()
        return self._fernet.encrypt_at_time(data, int(now)).decode("ascii")

    def open(self, value: str, *, now: float) -> FlowState:
        """The FlowState sealed in `value`; InvalidState if forged, altered or older than FLOW_TTL_S."""
        try:
            data = self._fernet.decrypt_at_time(value.encode("ascii"), FLOW_TTL_S, int(now))
            return FlowState(**json.loads(data))
        except (InvalidToken, UnicodeEncodeError, ValueError, TypeError) as exc:
            raise InvalidState("the login flow cookie is invalid or expired; start the login again") from exc


def check_state(flow: FlowState, state: str | None, *, provider: str) -> None:
    """The callback's `state` must equal the sealed one (constant-time) and name this provider."""
    if not state or not hmac.compare_digest(state.encode(), flow.state.encode()) or flow.provider != provider:
        raise InvalidState("the state does not match this browser's login")


def safe_return_to(raw: object) -> str:
    """`raw` if it is a relative path on this origin, else "/".

    A browser reads `\\` as `/` and drops tabs and newlines, and servers may decode `%2F` or `%5C`,
    so each of those (raw or percent-encoded, to any depth) turns `/x` into `//evil` and is refused.
    """
    if not isinstance(raw, str) or not raw or len(raw) > _MAX_RETURN_TO:
        return "/"
    text = raw
    for depth in range(4):
        if not _plain_relative(text, raw=depth == 0):
            return "/"
        try:
            decoded = unquote(text, errors="strict") if "%" in text else text
        except UnicodeDecodeError:
            return "/"
        if decoded == text:
            return raw
        text = decoded
    return "/"  # still changing after four rounds of decoding: nobody writes such a path by accident


def _plain_relative(text: str, *, raw: bool) -> bool:
    if not text.startswith("/") or text.startswith("//"):
        return False
    # Raw, no whitespace at all; decoded, an encoded space ("%20") is a plain path character.
    if any(ch == "\\" or (raw and ch.isspace()) or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in text):
        return False
    parts = urlsplit(text)
    return not parts.scheme and not parts.netloc


def _signing_key(token: str, keys: Mapping[str, jwt.PyJWK]) -> tuple[jwt.PyJWK, str]:
    """The published key the token names and the algorithm it must be verified with.

    KeyError when the `kid` is unknown (the caller refreshes the provider's keys once and retries).
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise IdpError("the provider's token is not a JWT") from exc
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in _ASYMMETRIC:
        raise IdpError(f"the provider's token uses an algorithm that is not accepted ({alg!r})")
    if kid is None:
        candidates = [k for k in keys.values() if k.algorithm_name == alg]
        if len(candidates) != 1:
            raise KeyError("")
        key = candidates[0]
    else:
        key = keys[str(kid)]
    # The key decides the algorithm: a token cannot pick one the provider did not publish for that key.
    if key.algorithm_name != alg:
        raise IdpError("the provider's token was signed with an algorithm its key is not for")
    return key, alg


def _decode(
    token: str, keys: Mapping[str, jwt.PyJWK], *, issuer: str, client_id: str, require: list[str]
) -> dict[str, Any]:
    key, alg = _signing_key(token, keys)
    try:
        # exp and iat are checked by the callers against the injected clock; pyjwt would read the system's.
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            options={"require": require, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.PyJWTError as exc:
        raise IdpError(f"the provider's token does not verify: {exc}") from exc
    return claims


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IdpError(f"the provider's token has no numeric {name}")
    return float(value)


def _check_issued(
    claims: Mapping[str, Any], *, now: float, leeway: float, max_age: float, what: str, error: type[Exception]
) -> None:
    """`iat` neither ahead of now nor older than `max_age` (each with `leeway`), and `nbf`, when
    present, passed: a token minted for later, or long ago, is not one the provider just sent."""
    iat = _number(claims, "iat")
    if iat > now + leeway:
        raise error(f"the {what} was issued in the future (iat ahead of this clock by more than the leeway)")
    if iat < now - max_age - leeway:
        raise error(f"the {what} was issued too long ago")
    if "nbf" in claims and _number(claims, "nbf") > now + leeway:
        raise error(f"the {what} is not valid yet (nbf)")


def verify_id_token(
    token: str, keys: Mapping[str, jwt.PyJWK], *, issuer: str, client_id: str, nonce: str, now: float, leeway: float
) -> dict[str, Any]:
    """The claims of a verified id_token (OpenID Connect Core §3.1.3.7); IdpError or InvalidState if not.

    KeyError propagates for an unknown `kid`.
    """
    claims = _decode(token, keys, issuer=issuer, client_id=client_id, require=["iss", "aud", "sub", "exp", "iat"])
    if _number(claims, "exp") + leeway <= now:
        raise IdpError("the provider's id_token has expired")
    _check_issued(claims, now=now, leeway=leeway, max_age=ID_TOKEN_MAX_AGE_S, what="id_token", error=IdpError)
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
        raise IdpError("the id_token names several audiences but not this client as its azp")
    if "azp" in claims and claims["azp"] != client_id:
        raise IdpError("the id_token was issued to another client (azp)")
    got = claims.get("nonce")
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
        # The code was obtained for another login than the one this browser started.
        raise InvalidState("the id_token's nonce does not match this browser's login")
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise IdpError("the id_token has no subject")
    return claims


@dataclass(frozen=True, slots=True)
class LogoutClaims:
    """What a verified logout token asks to end: the provider's user (`sub`) and/or its session (`sid`)."""

    sub: str | None
    sid: str | None
    jti: str
    iat: float
    exp: float | None = None


def verify_logout_token(
    token: str, keys: Mapping[str, jwt.PyJWK], *, issuer: str, client_id: str, now: float, leeway: float
) -> LogoutClaims:
    """A logout token checked as OpenID Back-Channel Logout 1.0 §2.6 says; BadRequest when it is not one.

    KeyError propagates for an unknown `kid`.
    """
    try:
        claims = _decode(token, keys, issuer=issuer, client_id=client_id, require=["iss", "aud", "iat", "jti"])
        iat = _number(claims, "iat")
        exp = _number(claims, "exp") if "exp" in claims else None
        if exp is not None and exp + leeway <= now:
            raise BadRequest("the logout token has expired")
        _check_issued(claims, now=now, leeway=leeway, max_age=LOGOUT_TOKEN_MAX_AGE_S, what="logout token", error=BadRequest)
    except IdpError as exc:
        raise BadRequest(f"invalid logout token: {exc.description}") from exc
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise BadRequest("the logout token lacks the back-channel logout event")
    if "nonce" in claims:
        raise BadRequest("a logout token must not carry a nonce")
    sub, sid = claims.get("sub"), claims.get("sid")
    if sub is not None and not isinstance(sub, str) or sid is not None and not isinstance(sid, str):
        raise BadRequest("the logout token's sub and sid must be strings")
    if not sub and not sid:
        raise BadRequest("the logout token names neither a sub nor a sid")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise BadRequest("the logout token has no jti")
    return LogoutClaims(sub=sub or None, sid=sid or None, jti=claims["jti"], iat=iat, exp=exp)
