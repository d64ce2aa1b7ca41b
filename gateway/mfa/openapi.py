"""The OpenAPI paths of the second-factor endpoints, merged into gateway/http/openapi.py's document.

Must not: import aiohttp or describe anything `routes.py` does not do.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MFA_REQUIRED", "mfa_paths"]

_WWW_AUTH = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
_RETRY = {"Retry-After": {"schema": {"type": "string"}, "required": True}}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {"accessCookie": []}]
_ALLOW = {"Allow": {"schema": {"type": "string"}, "required": True}}

# The first answer of a login when the user has a second factor (no session, no cookie yet).
MFA_REQUIRED = {
    "type": "object",
    "required": ["mfa_required", "mfa_token", "methods"],
    "properties": {
        "mfa_required": {"const": True},
        "mfa_token": {"type": "string", "description": "For POST /auth/login/mfa; 5 minutes, 5 tries, single use"},
        "methods": {"type": "array", "items": {"enum": ["totp", "recovery_code"]}},
    },
}
_CODES = {
    "type": "object",
    "required": ["recovery_codes"],
    "properties": {"recovery_codes": {"type": "array", "minItems": 10, "maxItems": 10, "items": {"type": "string"}}},
}
_CODE_BODY = {
    "type": "object",
    "required": ["code"],
    "properties": {"code": {"type": "string", "pattern": "^[0-9 ]{6,8}$"}},
}
_CREDENTIAL = {"type": "object", "description": "PublicKeyCredential in its JSON form (base64url fields)"}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        out["headers"] = headers
    return out


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _authed(summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": _BEARER,
        "responses": {
            "400": _error("invalid_request"),
            "403": _error("csrf_failed"),
            "404": _error("not_found: the caller's user (or passkey) is gone"),
            "405": _error("Method not allowed", _ALLOW),
            **responses,
            "401": _error("missing_token or invalid_token", _WWW_AUTH),
        },
    }
    if body is not None:
        op["requestBody"] = _body(body)
    return op


def mfa_paths(p: str) -> dict[str, Any]:
    """`/mfa/*`, `/login/mfa` and `/passkeys/*` under the auth prefix `p`."""
    tokens = {
        "description": "Tokens issued, as by a login",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Tokens"}}},
    }
    wrong_code = _error("invalid_mfa_code: wrong, expired or already used")
    state = _error("mfa_state: TOTP already on, or nothing pending / not on")
    limited = _error("rate_limited: too many wrong codes", _RETRY)
    return {
        f"{p}/mfa": {
            "get": _authed(
                "Which second factors the caller has, and the amr of the current session",
                {"200": _json({"type": "object"}, "Factors")},
            )
        },
        f"{p}/mfa/totp/enroll": {
            "post": _authed(
                "Start TOTP enrolment: a new secret (pending until confirmed)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["secret", "otpauth_uri", "qr_svg"],
                            "properties": {
                                "secret": {"type": "string"},
                                "otpauth_uri": {"type": "string"},
                                "qr_svg": {
                                    "type": "string",
                                    "description": "data: URI of an SVG QR code of otpauth_uri",
                                },
                            },
                        },
                        "Pending secret",
                    ),
                    "409": state,
                },
            )
        },
        f"{p}/mfa/totp/confirm": {
            "post": _authed(
                "Turn TOTP on with a current code; the recovery codes are shown this once",
                {"200": _json(_CODES, "TOTP on"), "403": wrong_code, "409": state, "429": limited},
                _CODE_BODY,
            )
        },
        f"{p}/mfa/totp": {
            "delete": _authed(
                "Turn TOTP off (recovery codes void) with a current code",
                {"204": {"description": "TOTP off"}, "403": wrong_code, "409": state, "429": limited},
                _CODE_BODY,
            )
        },
        f"{p}/mfa/recovery-codes": {
            "post": _authed(
                "Ten new recovery codes (the old ones void), given a current TOTP code",
                {"200": _json(_CODES, "New codes"), "403": wrong_code, "409": state, "429": limited},
                _CODE_BODY,
            )
        },
        f"{p}/login/mfa": {
            "post": {
                "summary": "Second step of a login: a TOTP code or a recovery code for the mfa_token",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["mfa_token"],
                        "properties": {
                            "mfa_token": {"type": "string"},
                            "code": {"type": "string"},
                            "recovery_code": {"type": "string"},
                            "refresh_in_body": {"type": "boolean"},
                        },
                    }
                ),
                "responses": {
                    "200": tokens,
                    "400": _error("invalid_request"),
                    "401": _error("invalid_mfa_token or invalid_mfa_code", _WWW_AUTH),
                    "429": _error("rate_limited: too many wrong second steps for the account", _RETRY),
                    "403": _error("csrf_failed"),
                    "405": _error("Method not allowed", _ALLOW),
                },
            }
        },
        f"{p}/passkeys": {
            "get": _authed("The caller's passkeys", {"200": _json({"type": "object"}, "{passkeys: [...]}")})
        },
        f"{p}/passkeys/{{id}}": {
            "delete": {
                **_authed("Remove one of the caller's passkeys", {"204": {"description": "Removed"}}),
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            }
        },
        f"{p}/passkeys/register/options": {
            "post": _authed(
                "PublicKeyCredentialCreationOptions for navigator.credentials.create()",
                {"200": _json({"type": "object"}, "Creation options")},
            )
        },
        f"{p}/passkeys/register": {
            "post": _authed(
                "Register a passkey",
                {
                    "201": _json(
                        {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}, "Registered"
                    ),
                    "400": _error("invalid_passkey or invalid_request"),
                },
                {
                    "type": "object",
                    "required": ["credential"],
                    "properties": {"credential": _CREDENTIAL, "name": {"type": "string"}},
                },
            )
        },
        f"{p}/passkeys/login/options": {
            "post": {
                "summary": "PublicKeyCredentialRequestOptions; with an email, its passkeys are listed",
                "requestBody": _body({"type": "object", "properties": {"email": {"type": "string"}}}, required=False),
                "responses": {
                    "200": _json({"type": "object"}, "Request options"),
                    "400": _error("invalid_request"),
                    "403": _error("csrf_failed"),
                    "405": _error("Method not allowed", _ALLOW),
                },
            }
        },
        f"{p}/passkeys/login": {
            "post": {
                "summary": "Passwordless login with a user-verified passkey (amr hwk, user, mfa)",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["credential"],
                        "properties": {
                            "credential": _CREDENTIAL,
                            "remember_me": {"type": "boolean"},
                            "refresh_in_body": {"type": "boolean"},
                        },
                    }
                ),
                "responses": {
                    "200": tokens,
                    "400": _error("invalid_request"),
                    "401": _error("invalid_passkey", _WWW_AUTH),
                    "403": _error("csrf_failed"),
                    "405": _error("Method not allowed", _ALLOW),
                },
            }
        },
    }
