"""What every route module answers with: the JSON error body, the token body and the session cookies.

Must not: decide anything; handlers and the middleware call these with what they decided.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from aiohttp import web

from gateway.config import Config
from gateway.core.errors import AuthError, GatewayError, MethodNotAllowed, RateLimited, TokenInvalid
from gateway.sessions.service import Issued

__all__ = [
    "NO_STORE",
    "clear_cookies",
    "error_response",
    "iso",
    "set_cookie",
    "set_session_cookies",
    "token_response",
]

# Answers that carry a token, a secret or a user's data: no cache may keep them (RFC 6749 5.1 names both headers).
# Read-only: every route module shares this one mapping.
NO_STORE = MappingProxyType({"Cache-Control": "no-store", "Pragma": "no-cache"})


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def error_response(exc: GatewayError) -> web.Response:
    """The JSON error body with the headers its status needs (WWW-Authenticate, Allow, Retry-After)."""
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    challenge = getattr(exc, "challenge", None)
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    elif isinstance(exc, TokenInvalid):
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{_quote(exc.description)}"'
    elif isinstance(exc, AuthError):
        headers["WWW-Authenticate"] = 'Bearer realm="gateway"'
    elif isinstance(exc, MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allow)
    elif isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    body = {"error": exc.code, "error_description": exc.description or exc.code.replace("_", " ")}
    return web.json_response(body, status=exc.status, headers=headers)


def set_cookie(response: web.StreamResponse, cfg: Config, name: str, value: str, *, path: str, max_age: int | None) -> None:
    """One gateway cookie, HttpOnly, with the configured domain, Secure and SameSite."""
    c = cfg.cookies
    response.set_cookie(
        name, value, path=path, max_age=max_age, domain=c.domain, secure=c.secure, httponly=True, samesite=c.samesite
    )


def clear_cookies(response: web.StreamResponse, cfg: Config) -> None:
    """Both session cookies emptied and expired."""
    set_cookie(response, cfg, cfg.cookies.refresh_name, "", path=cfg.server.auth_prefix, max_age=0)
    set_cookie(response, cfg, cfg.cookies.access_name, "", path="/", max_age=0)


def token_response(cfg: Config, issued: Issued, *, refresh_in_body: bool) -> web.Response:
    """A login's or refresh's answer: the tokens in the body or in cookies, as the config and the client asked."""
    delivery = cfg.tokens.access_delivery
    body: dict[str, Any] = {"token_type": "Bearer", "expires_in": issued.expires_in}
    if delivery in ("body", "both"):
        body["access_token"] = issued.access_token
    if refresh_in_body:
        body["refresh_token"] = issued.refresh_token
    response = web.json_response(body, headers=NO_STORE)
    if not refresh_in_body:
        set_cookie(
            response, cfg, cfg.cookies.refresh_name, issued.refresh_token,
            path=cfg.server.auth_prefix, max_age=issued.refresh_max_age,
        )  # fmt: skip
    if delivery in ("cookie", "both"):
        set_cookie(response, cfg, cfg.cookies.access_name, issued.access_token, path="/", max_age=issued.expires_in)
    return response


def set_session_cookies(response: web.StreamResponse, cfg: Config, issued: Issued) -> None:
    """The refresh cookie, and the access cookie when delivery has cookie: for logins that answer with a
    redirect (federated login), where no body can carry a token."""
    set_cookie(
        response, cfg, cfg.cookies.refresh_name, issued.refresh_token, path=cfg.server.auth_prefix, max_age=issued.refresh_max_age
    )
    if cfg.tokens.access_delivery in ("cookie", "both"):
        set_cookie(response, cfg, cfg.cookies.access_name, issued.access_token, path="/", max_age=issued.expires_in)


def iso(ts: float) -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
