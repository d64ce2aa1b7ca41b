"""The gateway's exception tree; each class carries the HTTP `status` and the JSON error `code`.

GatewayError
├── BadRequest (400 invalid_request)
│   ├── UnsupportedGrantType (unsupported_grant_type)
│   ├── InvalidScope (invalid_scope)
│   ├── InvalidEmailToken (invalid_email_token)
│   ├── InvalidState (invalid_state)
│   ├── PasskeyInvalid (invalid_passkey)
│   └── AmbiguousPath (ambiguous_path)
├── RequestTimeout (408 request_timeout)
├── PayloadTooLarge (413 payload_too_large)
├── AuthError (401)
│   ├── TokenMissing (missing_token)
│   ├── TokenInvalid (invalid_token)
│   │   └── TokenExpired (invalid_token)
│   ├── InvalidCredentials (invalid_credentials)
│   ├── RefreshMissing (missing_refresh_token)
│   ├── InsufficientUserAuthentication (insufficient_user_authentication)
│   ├── InvalidClient (invalid_client, WWW-Authenticate: Basic)
│   ├── MfaTokenInvalid (invalid_mfa_token)
│   ├── MfaCodeInvalid (invalid_mfa_code)
│   └── PasskeyRejected (invalid_passkey)
├── Forbidden (403)
│   ├── RefreshRejected (invalid_refresh_token)
│   │   └── RefreshReused (refresh_token_reused)
│   ├── CsrfFailed (csrf_failed)
│   ├── InsufficientScope (insufficient_scope)
│   ├── EmailNotVerified (email_not_verified)
│   ├── WrongCurrentPassword (invalid_credentials)
│   ├── DomainNotAllowed (domain_not_allowed)
│   ├── AccountNotFound (account_not_found)
│   └── MfaCodeRefused (invalid_mfa_code)
├── NoRoute (404 not_found)
├── MfaStateError (409 mfa_state)
├── MethodNotAllowed (405 method_not_allowed)
├── RateLimited (429 rate_limited)
├── UpstreamError (502 bad_gateway)
│   └── UpstreamTimeout (504 upstream_timeout)
├── IdpError (502 idp_error)
├── StoreError (500 store_error)
│   ├── StoreUnavailable (503 store_unavailable)
│   └── Conflict (409 conflict)
└── ConfigError (startup only)

Must not: import aiohttp or any other module of the gateway.
"""

from __future__ import annotations

__all__ = [
    "AccountNotFound",
    "AmbiguousPath",
    "AuthError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "CsrfFailed",
    "DomainNotAllowed",
    "EmailNotVerified",
    "Forbidden",
    "GatewayError",
    "IdpError",
    "InsufficientScope",
    "InsufficientUserAuthentication",
    "InvalidClient",
    "InvalidCredentials",
    "InvalidEmailToken",
    "InvalidScope",
    "InvalidState",
    "MethodNotAllowed",
    "MfaCodeInvalid",
    "MfaCodeRefused",
    "MfaStateError",
    "MfaTokenInvalid",
    "NoRoute",
    "PasskeyInvalid",
    "PasskeyRejected",
    "PayloadTooLarge",
    "RateLimited",
    "RefreshMissing",
    "RefreshRejected",
    "RefreshReused",
    "RequestTimeout",
    "StoreError",
    "StoreUnavailable",
    "TokenExpired",
    "TokenInvalid",
    "TokenMissing",
    "UpstreamError",
    "UnsupportedGrantType",
    "UpstreamTimeout",
    "WrongCurrentPassword",
]


class GatewayError(Exception):
    """Base of every error the gateway renders; `str(exc)` is the client-facing description."""

    status = 500
    code = "server_error"

    def __init__(self, description: str = "", **extra: object) -> None:
        super().__init__(description)
        self.description = description
        self.extra = extra


class BadRequest(GatewayError):
    """The request is malformed: bad body, bad path, duplicated header."""

    status = 400
    code = "invalid_request"


class AmbiguousPath(BadRequest):
    """The path would pick another route (or a gateway path) if case were ignored, as some upstreams route."""

    code = "ambiguous_path"


class RequestTimeout(GatewayError):
    """The client took too long to send its request body."""

    status = 408
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    """The request body is larger than this endpoint accepts."""

    status = 413
    code = "payload_too_large"


class AuthError(GatewayError):
    """Authentication is needed or failed (401)."""

    status = 401
    code = "unauthorized"


class TokenMissing(AuthError):
    """No access token was sent to a route that requires one."""

    code = "missing_token"


class TokenInvalid(AuthError):
    """The access token is malformed, forged, of the wrong kind or for a revoked session."""

    code = "invalid_token"


class TokenExpired(TokenInvalid):
    """The access token was genuine but its `exp` has passed."""


class InvalidCredentials(AuthError):
    """Unknown email, wrong password or disabled user: one answer for all three."""

    code = "invalid_credentials"


class RefreshMissing(AuthError):
    """No refresh token in the cookie or the body."""

    code = "missing_refresh_token"


class Forbidden(GatewayError):
    """The request is understood and refused (403)."""

    status = 403
    code = "forbidden"


class RefreshRejected(Forbidden):
    """The refresh token is unknown, expired, revoked or belongs to a disabled user."""

    code = "invalid_refresh_token"


class RefreshReused(RefreshRejected):
    """An already rotated refresh token came back after the grace window: the session is revoked."""

    code = "refresh_token_reused"


class CsrfFailed(Forbidden):
    """A cookie-authenticated unsafe request came without an allowed Origin or Referer."""

    code = "csrf_failed"


# -- authorization ---------------------------------------------------------------------------------
# `challenge` is the WWW-Authenticate value error_middleware sends with these.


class InsufficientScope(Forbidden):
    """Authenticated, but the route's policy refuses this caller (RFC 6750 3.1)."""

    code = "insufficient_scope"
    challenge = 'Bearer error="insufficient_scope"'


class InsufficientUserAuthentication(AuthError):
    """The route's policy admits this caller only after a second factor (RFC 9470)."""

    code = "insufficient_user_authentication"
    challenge = 'Bearer error="insufficient_user_authentication"'


# -- machine clients (RFC 6749 5.2) -----------------------------------------------------------------


class InvalidClient(AuthError):
    """Unknown client, wrong secret, or no client authentication: one answer for all."""

    code = "invalid_client"
    challenge = 'Basic realm="gateway"'


class UnsupportedGrantType(BadRequest):
    """`grant_type` is not one this endpoint issues tokens for."""

    code = "unsupported_grant_type"


class InvalidScope(BadRequest):
    """A requested scope is unknown or was not given to the client."""

    code = "invalid_scope"


class NoRoute(GatewayError):
    """No route or gateway endpoint matches the path, or the resource is not the caller's."""

    status = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    """The gateway endpoint exists but not for this method; `allow` lists the methods."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, description: str = "", *, allow: tuple[str, ...] = ()) -> None:
        super().__init__(description)
        self.allow = allow


class RateLimited(GatewayError):
    """Too many attempts; `retry_after` is in whole seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, description: str = "", *, retry_after: int = 1) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class UpstreamError(GatewayError):
    """The upstream refused the connection or broke the exchange."""

    status = 502
    code = "bad_gateway"


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, answer or send data within the route timeout."""

    status = 504
    code = "upstream_timeout"


class StoreError(GatewayError):
    """The session store failed in a way that is not the client's fault."""

    status = 500
    code = "store_error"


class StoreUnavailable(StoreError):
    """The session store cannot be reached right now."""

    status = 503
    code = "store_unavailable"


class Conflict(StoreError):
    """A uniqueness rule was broken (for example, an email that already exists)."""

    status = 409
    code = "conflict"


# -- accounts (issue 12) ---------------------------------------------------------------------------


class InvalidEmailToken(BadRequest):
    """A verification or reset token that is unknown, used, voided by a newer one, or expired."""

    code = "invalid_email_token"


# -- federated login ------------------------------------------------------------------------------


class InvalidState(BadRequest):
    """A provider callback whose state is missing, wrong, expired or already used (no login-flow cookie)."""

    code = "invalid_state"


class IdpError(GatewayError):
    """The identity provider failed, is unreachable, or answered with something that does not verify."""

    status = 502
    code = "idp_error"


class EmailNotVerified(Forbidden):
    """The address is not verified: after a right password with `accounts.require_verified_email`, or a
    provider that does not vouch for it (federated login cannot link it to an existing account)."""

    code = "email_not_verified"


class WrongCurrentPassword(Forbidden):
    """A password change whose `current_password` is wrong (403: the caller is authenticated)."""

    code = "invalid_credentials"


class DomainNotAllowed(Forbidden):
    """The address is outside the provider's `allowed_email_domains`."""

    code = "domain_not_allowed"


class AccountNotFound(Forbidden):
    """No local account for this identity, and the provider may not create one (`create_users = false`)."""

    code = "account_not_found"


# -- second factors (gateway/mfa) ------------------------------------------------------------


class MfaTokenInvalid(AuthError):
    """The mfa_token of a two-step login is unknown, expired, used up or out of tries."""

    code = "invalid_mfa_token"


class MfaCodeInvalid(AuthError):
    """The second step of a login: a wrong, reused or stale TOTP or recovery code."""

    code = "invalid_mfa_code"


class MfaCodeRefused(Forbidden):
    """An authenticated caller's TOTP or recovery code was wrong (403: the access token itself is fine)."""

    code = "invalid_mfa_code"


class PasskeyRejected(AuthError):
    """A WebAuthn response that does not verify: unknown challenge or credential, bad signature, counter."""

    code = "invalid_passkey"


class PasskeyInvalid(BadRequest):
    """A passkey registration that does not verify (unknown challenge, wrong origin or RP id, no user verification)."""

    code = "invalid_passkey"


class MfaStateError(GatewayError):
    """The factor is not in a state that allows this (enrol while on, confirm with nothing pending)."""

    status = 409
    code = "mfa_state"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every `key.path: what is wrong`."""

    def __init__(self, problems: list[str], *, source: str = "") -> None:
        self.problems = problems
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("; ".join(f"{prefix}{p}" for p in problems))
