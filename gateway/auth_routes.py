"""The `/auth/*` handlers: parse the request, call `sessions`, render JSON and cookies.

Must not: hold session rules (they live in `sessions.py`), or read a refresh token from a URL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from gateway.auth import authenticate, check_origin, client_ip, extract_token
from gateway.config import Config
from gateway.errors import BadRequest, PayloadTooLarge, RefreshMissing, RefreshRejected, RequestTimeout, TokenInvalid
from gateway.keys import CONFIG, KEYRING, MFA, SESSIONS
from gateway.log import audit
from gateway.middleware import error_response
from gateway.sessions import Issued

__all__ = ["AUTH_BODY_LIMIT", "auth_endpoints", "read_raw_body", "set_session_cookies"]

AUTH_BODY_LIMIT = 16 * 1024
AUTH_BODY_TIMEOUT = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TRUE = {"1", "true", "on", "yes"}


async def read_raw_body(request: web.Request) -> bytes:
    """The whole body of an /auth request: over 16 KiB a 413, slower than 10 s a 408."""
    if request.content_length is not None and request.content_length > AUTH_BODY_LIMIT:
        raise PayloadTooLarge(f"the body is larger than {AUTH_BODY_LIMIT} bytes")
    if request.content.is_eof():
        # The whole body is already here (a small body usually arrives with the headers): nothing to
        # wait for, so no timer to arm and cancel on every refresh.
        raw = request.content.read_nowait(AUTH_BODY_LIMIT + 1)
        if len(raw) > AUTH_BODY_LIMIT:
            raise PayloadTooLarge(f"the body is larger than {AUTH_BODY_LIMIT} bytes")
        return raw
    raw = b""
    try:
        async with asyncio.timeout(AUTH_BODY_TIMEOUT):
            # read(n) returns what has arrived so far, so a body split over packets needs the loop.
            while len(raw) <= AUTH_BODY_LIMIT and (chunk := await request.content.read(AUTH_BODY_LIMIT + 1 - len(raw))):
                raw += chunk
    except TimeoutError as exc:
        raise RequestTimeout("the request body did not arrive in time") from exc
    if len(raw) > AUTH_BODY_LIMIT:
        raise PayloadTooLarge(f"the body is larger than {AUTH_BODY_LIMIT} bytes")
    return raw


async def _read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object or a urlencoded form; anything else is a 400, over 16 KiB a 413, too slow a 408."""
    raw = await read_raw_body(request)
    if not raw.strip():
        return {}
    ctype = request.content_type
    # A body that opens with "{" is JSON whatever its label: curl -d labels everything as a form.
    if raw.lstrip().startswith(b"{"):
        ctype = "application/json"
    if ctype == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=32)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("the form body is malformed") from exc
        return {k: v[-1] for k, v in form.items()}
    if ctype in ("application/json", "application/octet-stream", "") or ctype.endswith("+json"):
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadRequest("the body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise BadRequest("the JSON body must be an object")
        return data
    raise BadRequest("the body must be application/json or application/x-www-form-urlencoded")


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    raise BadRequest(f"{name} must be a boolean")


def _uses_cookies(request: web.Request, cfg: Config) -> bool:
    return cfg.cookies.access_name in request.cookies or cfg.cookies.refresh_name in request.cookies


def check_anonymous_post(request: web.Request, cfg: Config) -> None:
    """The CSRF rule of a POST that carries no access token (login, its second step, sign-up, password
    reset): a browser sends Origin (or Referer), or the gateway's cookies, and then the origin must be
    ours; other clients send none of them and pass."""
    if "Origin" in request.headers or "Referer" in request.headers or _uses_cookies(request, cfg):
        check_origin(request, cfg)


def _set_cookie(response: web.StreamResponse, cfg: Config, name: str, value: str, *, path: str, max_age: int | None) -> None:
    c = cfg.cookies
    response.set_cookie(
        name, value, path=path, max_age=max_age, domain=c.domain, secure=c.secure, httponly=True, samesite=c.samesite
    )


def _clear_cookies(response: web.StreamResponse, cfg: Config) -> None:
    _set_cookie(response, cfg, cfg.cookies.refresh_name, "", path=cfg.server.auth_prefix, max_age=0)
    _set_cookie(response, cfg, cfg.cookies.access_name, "", path="/", max_age=0)


def _token_response(cfg: Config, issued: Issued, *, refresh_in_body: bool) -> web.Response:
    delivery = cfg.tokens.access_delivery
    body: dict[str, Any] = {"token_type": "Bearer", "expires_in": issued.expires_in}
    if delivery in ("body", "both"):
        body["access_token"] = issued.access_token
    if refresh_in_body:
        body["refresh_token"] = issued.refresh_token
    response = web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
    if not refresh_in_body:
        _set_cookie(
            response, cfg, cfg.cookies.refresh_name, issued.refresh_token,
            path=cfg.server.auth_prefix, max_age=issued.refresh_max_age,
        )  # fmt: skip
    if delivery in ("cookie", "both"):
        _set_cookie(response, cfg, cfg.cookies.access_name, issued.access_token, path="/", max_age=issued.expires_in)
    return response


def set_session_cookies(response: web.StreamResponse, cfg: Config, issued: Issued) -> None:
    """The refresh cookie, and the access cookie when delivery has cookie: for logins that answer with a
    redirect (federated login), where no body can carry a token."""
    _set_cookie(
        response, cfg, cfg.cookies.refresh_name, issued.refresh_token, path=cfg.server.auth_prefix, max_age=issued.refresh_max_age
    )
    if cfg.tokens.access_delivery in ("cookie", "both"):
        _set_cookie(response, cfg, cfg.cookies.access_name, issued.access_token, path="/", max_age=issued.expires_in)


async def login(request: web.Request) -> web.StreamResponse:
    """POST /auth/login."""
    cfg = request.app[CONFIG]
    check_anonymous_post(request, cfg)
    data = await _read_body(request)
    if "email" not in data or "password" not in data:
        raise BadRequest("email and password are required")
    # Both flags are parsed before the login: a bad one found afterwards would leave an open session behind a 400.
    remember_me, refresh_in_body = _flag(data, "remember_me"), _flag(data, "refresh_in_body")
    service, ip = request.app[SESSIONS], client_ip(request, cfg)
    user = await service.check_credentials(data["email"], data["password"], ip=ip)
    # A user with a second factor gets no session yet: only a token for POST /auth/login/mfa.
    pending = await request.app[MFA].begin_login(user, remember_me=remember_me, refresh_in_body=refresh_in_body)
    if pending is not None:
        body = {"mfa_required": True, "mfa_token": pending.mfa_token, "methods": pending.methods}
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
    user_agent = request.headers.get("User-Agent", "")
    issued = await service.start_session(user, remember_me=remember_me, user_agent=user_agent, ip=ip)
    return _token_response(cfg, issued, refresh_in_body=refresh_in_body)


async def refresh(request: web.Request) -> web.StreamResponse:
    """POST /auth/refresh-token: the body's token wins over the cookie, and is answered in kind."""
    cfg = request.app[CONFIG]
    data = await _read_body(request)
    token = data.get("refresh_token")
    in_body = token is not None
    if in_body and not isinstance(token, str):
        raise BadRequest("refresh_token must be a string")
    if not in_body:
        token = request.cookies.get(cfg.cookies.refresh_name)
        if not token:
            raise RefreshMissing("no refresh token was sent")
        check_origin(request, cfg)
    assert isinstance(token, str)
    try:
        issued = await request.app[SESSIONS].refresh(token, ip=client_ip(request, cfg))
    except RefreshRejected as exc:
        response = error_response(exc)
        _clear_cookies(response, cfg)
        return response
    return _token_response(cfg, issued, refresh_in_body=in_body)


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /auth/logout: revokes the refresh token's session, else the access token's; always 204."""
    cfg = request.app[CONFIG]
    service = request.app[SESSIONS]
    if _uses_cookies(request, cfg):
        check_origin(request, cfg)
    data = await _read_body(request)
    token = data.get("refresh_token") or request.cookies.get(cfg.cookies.refresh_name)
    sid: str | None = None
    if isinstance(token, str) and token:
        found = await service.session_for_token(token)
        sid = found.id if found else None
    if sid is None:
        access, _ = extract_token(request, cfg)
        if access:
            try:
                sid = request.app[KEYRING].verify_ignoring_expiry(access).sid
            except TokenInvalid:
                sid = None
    if sid is not None:
        await service.revoke_session(sid, reason="logout", ip=client_ip(request, cfg))
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    _clear_cookies(response, cfg)
    return response


async def logout_all(request: web.Request) -> web.StreamResponse:
    """POST /auth/logout-all: every session of the caller."""
    cfg = request.app[CONFIG]
    principal = authenticate(request, required=True)
    assert principal is not None
    await request.app[SESSIONS].revoke_user(principal.sub, reason="logout_all", ip=client_ip(request, cfg))
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    _clear_cookies(response, cfg)
    return response


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def list_sessions(request: web.Request) -> web.StreamResponse:
    """GET /auth/sessions: the caller's live sessions."""
    principal = authenticate(request, required=True)
    assert principal is not None
    sessions = await request.app[SESSIONS].list_sessions(principal.sub)
    body = {
        "sessions": [
            {
                "id": s.id,
                "created_at": _iso(s.created_at),
                "last_used_at": _iso(s.last_used_at),
                "expires_at": _iso(min(s.expires_at, s.absolute_expires_at)),
                "user_agent": s.user_agent,
                "ip": s.ip,
                "current": s.id == principal.sid,
            }
            for s in sessions
        ]
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def delete_session(request: web.Request, session_id: str) -> web.StreamResponse:
    """DELETE /auth/sessions/{id}: 404 unless it is the caller's."""
    cfg = request.app[CONFIG]
    principal = authenticate(request, required=True)
    assert principal is not None
    await request.app[SESSIONS].revoke_session(
        session_id, reason="revoked_by_user", user_id=principal.sub, ip=client_ip(request, cfg)
    )
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    if session_id == principal.sid:
        _clear_cookies(response, cfg)
    return response


async def reject_token_in_url(request: web.Request) -> None:
    """A refresh token in any /auth URL may already sit in a log: revoke its session, answer 400."""
    cfg = request.app[CONFIG]
    token = request.query.get("refresh_token")
    if token is None:
        return
    found = await request.app[SESSIONS].session_for_token(token) if token else None
    if found is not None and found.revoked_at is None:
        await request.app[SESSIONS].revoke_session(found.id, reason="token_in_url", ip=client_ip(request, cfg))
    audit("token_in_url", session_id=found.id if found else None, ip=client_ip(request, cfg))
    raise BadRequest("a refresh token must never be sent in a URL; its session has been revoked")


def auth_endpoints(prefix: str) -> dict[str, dict[str, Handler]]:
    """Exact paths under the auth prefix, each with its handler per method."""
    return {
        f"{prefix}/login": {"POST": login},
        f"{prefix}/refresh-token": {"POST": refresh},
        f"{prefix}/logout": {"POST": logout},
        f"{prefix}/logout-all": {"POST": logout_all},
        f"{prefix}/sessions": {"GET": list_sessions},
    }

