"""The second-factor endpoints: TOTP and recovery codes under `/auth/mfa`, `/auth/login/mfa`, `/auth/passkeys`.

Must not: hold second-factor rules (they live in `service.py` and `passkeys.py`), or answer a step of a
login with anything but the login's own answer (tokens and cookies only once every factor is proven).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.core.errors import BadRequest
from gateway.http.auth import authenticate, client_ip, own_origin
from gateway.http.keys import CONFIG

# The login answer and body parsing are the login's own: shared, not copied, so both answer alike.
from gateway.http.request import Handler, check_anonymous_post, flag, read_body
from gateway.http.responses import NO_STORE, clear_cookies, iso, token_response
from gateway.mfa.keys import MFA, PASSKEYS
from gateway.store import PasskeyRecord
from gateway.tokens.keyring import Principal

__all__ = ["delete_passkey", "endpoints"]



def _caller(request: web.Request) -> Principal:
    principal = authenticate(request, required=True)
    assert principal is not None
    return principal


def _code(data: dict[str, Any]) -> str:
    if "code" not in data:
        raise BadRequest("code is required")
    return _text(data, "code")


def _text(data: dict[str, Any], name: str) -> str:
    """A field that must be a JSON string: another type is a malformed request (400), never a wrong
    code (which would count as a try and answer 401/403)."""
    value = data[name]
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


# -- TOTP and recovery codes -----------------------------------------------------------------


async def totp_enroll(request: web.Request) -> web.StreamResponse:
    """POST /auth/mfa/totp/enroll: a new pending secret, its otpauth URI and a QR code of it."""
    principal = _caller(request)
    mfa = request.app[MFA]
    enrolment = await mfa.totp_enroll(await mfa.user(principal.sub))
    body = {"secret": enrolment.secret, "otpauth_uri": enrolment.otpauth_uri, "qr_svg": enrolment.qr_svg}
    return web.json_response(body, headers=NO_STORE)


async def totp_confirm(request: web.Request) -> web.StreamResponse:
    """POST /auth/mfa/totp/confirm {code}: TOTP on; the ten recovery codes, shown this once."""
    principal = _caller(request)
    codes = await request.app[MFA].totp_confirm(principal.sub, _code(await read_body(request)))
    return web.json_response({"recovery_codes": codes}, headers=NO_STORE)


async def totp_disable(request: web.Request) -> web.StreamResponse:
    """DELETE /auth/mfa/totp {code}: TOTP off, recovery codes void, the sessions TOTP opened ended."""
    principal = _caller(request)
    ended = await request.app[MFA].totp_disable(principal.sub, _code(await read_body(request)))
    response = web.Response(status=204, headers=NO_STORE)
    if principal.sid in ended:
        clear_cookies(response, request.app[CONFIG])
    return response


async def recovery_codes(request: web.Request) -> web.StreamResponse:
    """POST /auth/mfa/recovery-codes {code}: ten new recovery codes; the old ones are void."""
    principal = _caller(request)
    codes = await request.app[MFA].regenerate_recovery_codes(principal.sub, _code(await read_body(request)))
    return web.json_response({"recovery_codes": codes}, headers=NO_STORE)


async def status(request: web.Request) -> web.StreamResponse:
    """GET /auth/mfa: which factors the caller has, and how the current session was authenticated."""
    principal = _caller(request)
    body = {**await request.app[MFA].status(principal.sub), "amr": list(principal.amr)}
    return web.json_response(body, headers=NO_STORE)


async def login_mfa(request: web.Request) -> web.StreamResponse:
    """POST /auth/login/mfa {mfa_token, code | recovery_code}: the second step; answers as a login."""
    cfg = request.app[CONFIG]
    check_anonymous_post(request, request.app[CONFIG])
    data = await read_body(request)
    if "mfa_token" not in data or ("code" in data) == ("recovery_code" in data):
        raise BadRequest("mfa_token and exactly one of code or recovery_code are required")
    in_body = flag(data, "refresh_in_body")
    issued, refresh_in_body = await request.app[MFA].finish_login(
        _text(data, "mfa_token"),
        code=_text(data, "code") if "code" in data else None,
        recovery_code=_text(data, "recovery_code") if "recovery_code" in data else None,
        user_agent=request.headers.get("User-Agent", ""),
        ip=client_ip(request, cfg),
    )
    return token_response(cfg, issued, refresh_in_body=refresh_in_body or in_body)


# -- passkeys --------------------------------------------------------------------------------


def _passkey_json(p: PasskeyRecord) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "created_at": iso(p.created_at),
        "last_used_at": iso(p.last_used_at) if p.last_used_at is not None else None,
        "transports": list(p.transports),
    }


async def passkey_register_options(request: web.Request) -> web.StreamResponse:
    """POST /auth/passkeys/register/options: creation options for navigator.credentials.create()."""
    principal = _caller(request)
    user = await request.app[MFA].user(principal.sub)
    options = await request.app[PASSKEYS].registration_options(
        user, own_origin=own_origin(request, request.app[CONFIG])
    )
    return web.json_response(options, headers=NO_STORE)


async def passkey_register(request: web.Request) -> web.StreamResponse:
    """POST /auth/passkeys/register {credential, name?}: 201 {"id"}."""
    principal = _caller(request)
    user = await request.app[MFA].user(principal.sub)
    data = await read_body(request)
    record = await request.app[PASSKEYS].register(user, data, own_origin=own_origin(request, request.app[CONFIG]))
    return web.json_response({"id": record.id}, status=201, headers=NO_STORE)


async def passkey_login_options(request: web.Request) -> web.StreamResponse:
    """POST /auth/passkeys/login/options [{email}]: request options for navigator.credentials.get()."""
    check_anonymous_post(request, request.app[CONFIG])
    data = await read_body(request)
    options = await request.app[PASSKEYS].login_options(
        data.get("email"), own_origin=own_origin(request, request.app[CONFIG])
    )
    return web.json_response(options, headers=NO_STORE)


async def passkey_login(request: web.Request) -> web.StreamResponse:
    """POST /auth/passkeys/login {credential, remember_me?, refresh_in_body?}: answers as a login."""
    cfg = request.app[CONFIG]
    check_anonymous_post(request, request.app[CONFIG])
    data = await read_body(request)
    remember_me, refresh_in_body = flag(data, "remember_me"), flag(data, "refresh_in_body")
    issued = await request.app[PASSKEYS].login(
        data,
        own_origin=own_origin(request, cfg),
        remember_me=remember_me,
        user_agent=request.headers.get("User-Agent", ""),
        ip=client_ip(request, cfg),
    )
    return token_response(cfg, issued, refresh_in_body=refresh_in_body)


async def passkey_list(request: web.Request) -> web.StreamResponse:
    """GET /auth/passkeys: the caller's passkeys."""
    principal = _caller(request)
    passkeys = await request.app[PASSKEYS].list(principal.sub)
    return web.json_response({"passkeys": [_passkey_json(p) for p in passkeys]}, headers=NO_STORE)


async def delete_passkey(request: web.Request, passkey_id: str) -> web.StreamResponse:
    """DELETE /auth/passkeys/{id}: 204; 404 for a passkey that is not the caller's."""
    principal = _caller(request)
    await request.app[PASSKEYS].delete(principal.sub, passkey_id)
    return web.Response(status=204, headers=NO_STORE)


def endpoints(prefix: str) -> dict[str, dict[str, Handler]]:
    """Exact paths of the second factors under the auth prefix (app.py dispatches `DELETE {prefix}/passkeys/{id}`)."""
    return {
        f"{prefix}/mfa": {"GET": status},
        f"{prefix}/mfa/totp/enroll": {"POST": totp_enroll},
        f"{prefix}/mfa/totp/confirm": {"POST": totp_confirm},
        f"{prefix}/mfa/totp": {"DELETE": totp_disable},
        f"{prefix}/mfa/recovery-codes": {"POST": recovery_codes},
        f"{prefix}/login/mfa": {"POST": login_mfa},
        f"{prefix}/passkeys": {"GET": passkey_list},
        f"{prefix}/passkeys/register/options": {"POST": passkey_register_options},
        f"{prefix}/passkeys/register": {"POST": passkey_register},
        f"{prefix}/passkeys/login/options": {"POST": passkey_login_options},
        f"{prefix}/passkeys/login": {"POST": passkey_login},
    }
