"""The `/auth/*` handlers: parse the request, call `sessions`, render JSON and cookies.

Must not: hold session rules (they live in `sessions/service.py`), or read a refresh token from a URL.
"""

from __future__ import annotations

from aiohttp import web

from gateway.core.errors import BadRequest, RefreshMissing, RefreshRejected, TokenInvalid
from gateway.core.log import audit
from gateway.http.auth import authenticate, check_origin, client_ip, extract_token
from gateway.http.keys import CONFIG, KEYRING, SESSIONS
from gateway.http.request import Handler, check_anonymous_post, flag, read_body, uses_cookies
from gateway.http.responses import clear_cookies, error_response, iso, token_response
from gateway.mfa.keys import MFA

__all__ = ["auth_endpoints", "delete_session", "reject_token_in_url"]


async def login(request: web.Request) -> web.StreamResponse:
    """POST /auth/login."""
    cfg = request.app[CONFIG]
    check_anonymous_post(request, cfg)
    data = await read_body(request)
    if "email" not in data or "password" not in data:
        raise BadRequest("email and password are required")
    # Both flags are parsed before the login: a bad one found afterwards would leave an open session behind a 400.
    remember_me, refresh_in_body = flag(data, "remember_me"), flag(data, "refresh_in_body")
    service, ip = request.app[SESSIONS], client_ip(request, cfg)
    user = await service.check_credentials(data["email"], data["password"], ip=ip)
    # A user with a second factor gets no session yet: only a token for POST /auth/login/mfa.
    pending = await request.app[MFA].begin_login(user, remember_me=remember_me, refresh_in_body=refresh_in_body)
    if pending is not None:
        body = {"mfa_required": True, "mfa_token": pending.mfa_token, "methods": pending.methods}
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
    user_agent = request.headers.get("User-Agent", "")
    issued = await service.start_session(user, remember_me=remember_me, user_agent=user_agent, ip=ip)
    return token_response(cfg, issued, refresh_in_body=refresh_in_body)


async def refresh(request: web.Request) -> web.StreamResponse:
    """POST /auth/refresh-token: the body's token wins over the cookie, and is answered in kind."""
    cfg = request.app[CONFIG]
    data = await read_body(request)
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
        clear_cookies(response, cfg)
        return response
    return token_response(cfg, issued, refresh_in_body=in_body)


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /auth/logout: revokes the refresh token's session, else the access token's; always 204."""
    cfg = request.app[CONFIG]
    service = request.app[SESSIONS]
    if uses_cookies(request, cfg):
        check_origin(request, cfg)
    data = await read_body(request)
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
    clear_cookies(response, cfg)
    return response


async def logout_all(request: web.Request) -> web.StreamResponse:
    """POST /auth/logout-all: every session of the caller."""
    cfg = request.app[CONFIG]
    principal = authenticate(request, required=True)
    assert principal is not None
    await request.app[SESSIONS].revoke_user(principal.sub, reason="logout_all", ip=client_ip(request, cfg))
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    clear_cookies(response, cfg)
    return response


async def list_sessions(request: web.Request) -> web.StreamResponse:
    """GET /auth/sessions: the caller's live sessions."""
    principal = authenticate(request, required=True)
    assert principal is not None
    sessions = await request.app[SESSIONS].list_sessions(principal.sub)
    body = {
        "sessions": [
            {
                "id": s.id,
                "created_at": iso(s.created_at),
                "last_used_at": iso(s.last_used_at),
                "expires_at": iso(min(s.expires_at, s.absolute_expires_at)),
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
        clear_cookies(response, cfg)
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

