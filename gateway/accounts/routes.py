"""The HTTP side of self-service accounts: six POST endpoints and the two pages mail links open.

A page (GET) only shows a form whose button POSTs: mail scanners that follow links must not use a
token up. A form posted by that page (urlencoded, Accept: text/html) is answered with a small
page; every other client gets the JSON answers of SPEC.

Must not: hold account rules (they live in `service.py`), or put a token anywhere but the form.
"""

from __future__ import annotations

from html import escape

from aiohttp import web

from gateway.accounts.keys import ACCOUNTS
from gateway.core.errors import BadRequest, GatewayError, NoRoute
from gateway.http.auth import authenticate, client_ip
from gateway.http.keys import CONFIG
from gateway.http.request import Handler, check_anonymous_post, read_body
from gateway.http.responses import NO_STORE

__all__ = ["endpoints"]

# The token sits in the page's URL: never send it to another site as a Referer, never let another site
# frame the form. (`no-referrer` would make the form's POST carry `Origin: null`, which CSRF refuses.)
_PAGE_HEADERS = {
    **NO_STORE,
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;line-height:1.5}"
    "label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.4rem;font-size:1rem;box-sizing:border-box}"
    "button{margin-top:1rem;padding:.5rem 1.2rem;font-size:1rem}"
)


def _page(title: str, body: str, *, status: int = 200) -> web.Response:
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)


def _wants_page(request: web.Request) -> bool:
    return request.content_type == "application/x-www-form-urlencoded" and "text/html" in request.headers.get("Accept", "")


async def _signup(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    if not cfg.accounts.signup:
        raise NoRoute("sign-up is not enabled")
    check_anonymous_post(request, cfg)
    data = await read_body(request)
    if "email" not in data or "password" not in data:
        raise BadRequest("email and password are required")
    await request.app[ACCOUNTS].signup(data["email"], data["password"], ip=client_ip(request, cfg))
    return web.json_response({"status": "pending"}, status=202, headers=NO_STORE)


async def _email_only(request: web.Request) -> tuple[object, str]:
    """The `email` of a request that names only an address (resend, forgot), and the client address."""
    cfg = request.app[CONFIG]
    check_anonymous_post(request, cfg)
    data = await read_body(request)
    if "email" not in data:
        raise BadRequest("email is required")
    return data["email"], client_ip(request, cfg)


async def _resend(request: web.Request) -> web.StreamResponse:
    email, ip = await _email_only(request)
    await request.app[ACCOUNTS].resend_verification(email, ip=ip)
    return web.json_response({"status": "pending"}, status=202, headers=NO_STORE)


async def _forgot(request: web.Request) -> web.StreamResponse:
    email, ip = await _email_only(request)
    await request.app[ACCOUNTS].forgot_password(email, ip=ip)
    return web.json_response({"status": "pending"}, status=202, headers=NO_STORE)


async def _verify(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    check_anonymous_post(request, cfg)
    page = _wants_page(request)
    data = await read_body(request)
    try:
        await request.app[ACCOUNTS].verify_email(data.get("token"), ip=client_ip(request, cfg))
    except GatewayError as exc:
        if not page:
            raise
        return _page("Link not valid", f"<p>{escape(str(exc))}.</p>", status=exc.status)
    if page:
        return _page("Address verified", "<p>Your email address is verified. You can sign in now.</p>")
    return web.Response(status=204, headers=NO_STORE)


async def _reset(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    check_anonymous_post(request, cfg)
    page = _wants_page(request)
    data = await read_body(request)
    if "token" not in data or "password" not in data:
        raise BadRequest("token and password are required")
    try:
        await request.app[ACCOUNTS].reset_password(data["token"], data["password"], ip=client_ip(request, cfg))
    except GatewayError as exc:
        if not page:
            raise
        return _page("Password not changed", f"<p>{escape(str(exc))}.</p>", status=exc.status)
    if page:
        return _page("Password changed", "<p>Your new password is set and every session was signed out.</p>")
    return web.Response(status=204, headers=NO_STORE)


async def _change(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    principal = authenticate(request, required=True)
    assert principal is not None
    data = await read_body(request)
    if "current_password" not in data or "password" not in data:
        raise BadRequest("current_password and password are required")
    await request.app[ACCOUNTS].change_password(
        user_id=principal.sub, session_id=principal.sid, current=data["current_password"], new=data["password"],
        ip=client_ip(request, cfg),
    )  # fmt: skip
    return web.Response(status=204, headers=NO_STORE)


def _token_field(request: web.Request) -> str:
    token = request.query.get("token", "")
    return f'<input type="hidden" name="token" value="{escape(token, quote=True)}">'


async def _verify_page(request: web.Request) -> web.StreamResponse:
    prefix = request.app[CONFIG].server.auth_prefix
    return _page(
        "Confirm your email address",
        f'<form method="post" action="{escape(prefix)}/verify-email">{_token_field(request)}'
        "<p>Press the button to confirm that this address is yours.</p>"
        '<button type="submit">Confirm my address</button></form>',
    )


async def _reset_page(request: web.Request) -> web.StreamResponse:
    prefix = request.app[CONFIG].server.auth_prefix
    return _page(
        "Choose a new password",
        f'<form method="post" action="{escape(prefix)}/password/reset">{_token_field(request)}'
        '<label for="password">New password (8 to 1024 characters)</label>'
        '<input id="password" name="password" type="password" autocomplete="new-password" minlength="8"'
        ' maxlength="1024" required>'
        '<button type="submit">Set new password</button></form>',
    )


def endpoints(prefix: str) -> dict[str, dict[str, Handler]]:
    """The account paths under the auth prefix, each with its handler per method."""
    return {
        f"{prefix}/signup": {"POST": _signup},
        f"{prefix}/verify-email": {"GET": _verify_page, "POST": _verify},
        f"{prefix}/verify-email/resend": {"POST": _resend},
        f"{prefix}/password/forgot": {"POST": _forgot},
        f"{prefix}/password/reset": {"POST": _reset},
        f"{prefix}/reset-password": {"GET": _reset_page},
        f"{prefix}/password/change": {"POST": _change},
    }
