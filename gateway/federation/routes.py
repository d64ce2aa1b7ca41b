"""The federated-login endpoints: provider list, login redirect, callback, back-channel logout.

Must not: hold federation rules (they live in `service` and `flow`), put a provider's token in a
cookie or a log, or leave the login-flow cookie behind after a callback, whatever its outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import Config
from gateway.core.errors import BadRequest, GatewayError
from gateway.core.log import auth_log
from gateway.federation.discovery import ProviderClient
from gateway.federation.flow import FLOW_TTL_S
from gateway.federation.keys import FEDERATION
from gateway.federation.service import FederationService
from gateway.http.auth import client_ip, own_origin
from gateway.http.keys import CLOCK, CONFIG, KEYRING, SESSIONS
from gateway.http.request import Handler
from gateway.http.responses import NO_STORE, error_response, set_session_cookies

__all__ = ["endpoints", "federation_ctx"]


def _base(cfg: Config, name: str) -> str:
    return f"{cfg.server.auth_prefix}/oidc/{name}"


def _set_flow_cookie(response: web.StreamResponse, cfg: Config, name: str, value: str, *, max_age: int) -> None:
    # Lax, whatever cookies.samesite says: the provider's redirect back is a cross-site top-level GET,
    # which Strict would strip. A `__Host-` cookie must have Path=/ (the proxy strips it from what
    # upstreams get); without the prefix the path keeps it off every request but this callback.
    cookie = cfg.cookies.flow_name
    path = "/" if cookie.startswith("__Host-") else f"{_base(cfg, name)}/callback"
    response.set_cookie(
        cookie, value, path=path, max_age=max_age, secure=cfg.cookies.secure, httponly=True, samesite="Lax"
    )


async def list_providers(request: web.Request) -> web.StreamResponse:
    """GET /auth/providers: every configured provider with the URL that starts its login."""
    cfg = request.app[CONFIG]
    body = {"providers": [{"name": p.name, "login_url": f"{_base(cfg, p.name)}/login"} for p in cfg.identity_providers]}
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


def _login(name: str) -> Handler:
    async def login(request: web.Request) -> web.StreamResponse:
        """GET /auth/oidc/{name}/login[?return_to=/path]: 302 to the provider, flow bound by a cookie."""
        cfg = request.app[CONFIG]
        redirect_uri = f"{own_origin(request, cfg)}{_base(cfg, name)}/callback"
        start = await request.app[FEDERATION].begin_login(
            name, return_to=request.query.get("return_to"), redirect_uri=redirect_uri
        )
        response = web.Response(status=302, headers={"Location": start.location, **NO_STORE})
        _set_flow_cookie(response, cfg, name, start.cookie, max_age=FLOW_TTL_S)
        return response

    return login


def _callback(name: str) -> Handler:
    async def callback(request: web.Request) -> web.StreamResponse:
        """GET /auth/oidc/{name}/callback: the provider's answer becomes one of our sessions."""
        cfg = request.app[CONFIG]
        params = {k: request.query.getone(k) for k in request.query if len(request.query.getall(k)) == 1}
        try:
            if len(params) != len(request.query.keys()):
                raise BadRequest("a callback parameter appears more than once")
            issued, return_to = await request.app[FEDERATION].finish_login(
                name,
                params=params,
                cookie=request.cookies.get(cfg.cookies.flow_name),
                user_agent=request.headers.get("User-Agent", ""),
                ip=client_ip(request, cfg),
            )
        except GatewayError as exc:
            auth_log.info("federated_login_failed provider=%s reason=%s detail=%s", name, exc.code, exc.description)
            failed = error_response(exc)
            failed.headers.update(NO_STORE)
            _set_flow_cookie(failed, cfg, name, "", max_age=0)
            return failed
        response = web.Response(status=302, headers={"Location": return_to, **NO_STORE})
        _set_flow_cookie(response, cfg, name, "", max_age=0)
        set_session_cookies(response, cfg, issued)
        return response

    return callback


def _backchannel(name: str) -> Handler:
    async def backchannel_logout(request: web.Request) -> web.StreamResponse:
        """POST /auth/oidc/{name}/backchannel-logout (form `logout_token`): 200, or 400 for a bad token."""
        if request.content_type != "application/x-www-form-urlencoded":
            raise BadRequest("the body must be a form with logout_token")
        form = await request.post()
        if len(form.getall("logout_token", ())) != 1:
            raise BadRequest("exactly one logout_token is required")
        await request.app[FEDERATION].backchannel_logout(name, form.get("logout_token"))
        return web.Response(status=200, headers=NO_STORE)

    return backchannel_logout


def endpoints(prefix: str, names: tuple[str, ...]) -> dict[str, dict[str, Handler]]:
    """The federation paths under the auth prefix for the configured provider `names`."""
    table: dict[str, dict[str, Handler]] = {f"{prefix}/providers": {"GET": list_providers}}
    for name in names:
        table[f"{prefix}/oidc/{name}/login"] = {"GET": _login(name)}
        table[f"{prefix}/oidc/{name}/callback"] = {"GET": _callback(name)}
        table[f"{prefix}/oidc/{name}/backchannel-logout"] = {"POST": _backchannel(name)}
    return table


async def federation_ctx(app: web.Application) -> AsyncIterator[None]:
    """One client session for every provider's HTTP calls, and the federation rules on top of it."""
    cfg = app[CONFIG]
    session = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=30),
        headers={"User-Agent": "authgateway"},
    )
    clock = app[CLOCK]
    providers: dict[str, Any] = {
        p.name: ProviderClient(p, session=session, clock=clock) for p in cfg.identity_providers
    }
    app[FEDERATION] = FederationService(
        config=cfg,
        providers=providers,
        sessions=app[SESSIONS],
        flow_key=app[KEYRING].derived_key(b"oidc flow"),
        clock=clock,
    )
    try:
        yield
    finally:
        await session.close()
