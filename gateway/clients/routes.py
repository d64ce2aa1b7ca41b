"""`POST /auth/token` (client credentials, RFC 6749 4.4 and 5.2) and the app resource behind it.

Must not: hold client rules (they live in `service.py`), accept credentials from a URL, or answer a
token without `Cache-Control: no-store`.
"""

from __future__ import annotations

import binascii
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, unquote_plus

from aiohttp import BasicAuth, web

from gateway.clients.keys import CLIENTS
from gateway.clients.service import ClientService, FailureThrottle
from gateway.core.errors import BadRequest, InvalidClient, UnsupportedGrantType
from gateway.http.auth import client_ip
from gateway.http.keys import CLOCK, CONFIG, KEYRING, STORE
from gateway.http.request import Handler, read_raw_body
from gateway.http.responses import NO_STORE

__all__ = ["client_endpoints", "clients_ctx"]


async def _form(request: web.Request) -> dict[str, str]:
    """The urlencoded body; a repeated parameter, another media type or a bad encoding is invalid_request."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("the token request must be application/x-www-form-urlencoded")
    raw = await read_raw_body(request)
    try:
        parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw), max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the form body is malformed") from exc
    if any(len(v) > 1 for v in parsed.values()):
        raise BadRequest("a token request parameter must not be repeated (RFC 6749 3.2)")
    return {k: v[0] for k, v in parsed.items()}


def _credentials(request: web.Request, form: dict[str, str]) -> tuple[str, str]:
    """(client_id, client_secret) from HTTP Basic (RFC 6749 2.3.1 form-encoding) or the form, never both."""
    header = request.headers.getall("Authorization", ())
    if len(header) > 1:
        raise BadRequest("more than one Authorization header")
    in_form = "client_id" in form or "client_secret" in form
    if header and header[0].strip().lower().startswith("basic "):
        if in_form:
            raise BadRequest("authenticate the client one way: HTTP Basic or the form, not both")
        try:
            basic = BasicAuth.decode(header[0].strip(), encoding="utf-8")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise InvalidClient("the Basic credentials are malformed") from None
        return unquote_plus(basic.login), unquote_plus(basic.password)
    if header:
        raise InvalidClient("authenticate the client with HTTP Basic or client_id and client_secret in the form")
    if not in_form:
        raise InvalidClient("no client authentication")
    return form.get("client_id", ""), form.get("client_secret", "")


async def token(request: web.Request) -> web.StreamResponse:
    """Client credentials grant: 200 with an access token and its scope, or an RFC 6749 5.2 error."""
    if any(name in request.query for name in ("client_secret", "client_id")):
        raise BadRequest("client credentials must never be sent in a URL")
    form = await _form(request)
    client_id, secret = _credentials(request, form)
    grant = form.get("grant_type")
    if not grant:
        raise BadRequest("grant_type is required")
    if grant != "client_credentials":
        raise UnsupportedGrantType("this endpoint issues tokens for grant_type=client_credentials only")
    issued = await request.app[CLIENTS].issue(client_id, secret, scope=form.get("scope"), ip=client_ip(request, request.app[CONFIG]))
    body = {"access_token": issued.access_token, "token_type": "Bearer", "expires_in": issued.expires_in, "scope": issued.scope}
    return web.json_response(body, headers=NO_STORE)


def client_endpoints(prefix: str) -> dict[str, dict[str, Handler]]:
    """The machine-client endpoints under the auth prefix."""
    return {f"{prefix}/token": {"POST": token}}


async def clients_ctx(app: web.Application) -> AsyncIterator[None]:
    """A cleanup_ctx step (after the store's): the ClientService requests use."""
    app[CLIENTS] = ClientService(
        store=app[STORE], keys=app[KEYRING], throttle=FailureThrottle(app[STORE], app[CONFIG].limits.login), clock=app[CLOCK]
    )
    yield
