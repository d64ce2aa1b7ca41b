"""The OpenAPI paths of self-service accounts, merged into the gateway's document by `gateway.http.openapi`.

Must not: import aiohttp or describe anything the handlers in `routes.py` do not do.
"""

from __future__ import annotations

from typing import Any

__all__ = ["account_paths"]

_ERR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_PAGE = {"text/html": {"schema": {"type": "string"}}}


def _error(description: str, *, page: bool = False, retry: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {**_ERR, **(_PAGE if page else {})}}
    if retry:
        out["headers"] = {"Retry-After": {"schema": {"type": "string"}, "required": True}}
    return out


def _body(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": props}
    return {"required": True, "content": {"application/json": {"schema": schema}, "application/x-www-form-urlencoded": {"schema": schema}}}


_EMAIL = {"type": "string", "maxLength": 254}
_PASSWORD = {"type": "string", "minLength": 8, "maxLength": 1024}
_TOKEN = {"type": "string", "minLength": 1, "maxLength": 256}
_PENDING = {
    "description": "Accepted; the answer is the same whether or not the address has an account",
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["status"], "properties": {"status": {"const": "pending"}}}
        }
    },
}
_BASE_ERRORS = {
    "400": _error("invalid_request"),
    "403": _error("csrf_failed"),
    "405": _error("method_not_allowed"),
    "413": _error("payload_too_large"),
}


def _page_get(summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": [{"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "An HTML form whose button POSTs; the token is not used", "content": _PAGE}},
        }
    }


def account_paths(p: str) -> dict[str, Any]:
    """Paths of the six account endpoints and the two pages under the auth prefix `p`."""
    done = {"description": "Done", "content": _PAGE}
    return {
        f"{p}/signup": {
            "post": {
                "summary": "Sign up (when accounts.signup is on); the verification mail follows",
                "requestBody": _body(["email", "password"], email=_EMAIL, password=_PASSWORD),
                "responses": {
                    "202": _PENDING, **_BASE_ERRORS,
                    "404": _error("not_found: sign-up is off"), "429": _error("rate_limited", retry=True),
                },
            }
        },
        f"{p}/verify-email": {
            **_page_get("The page a verification link opens"),
            "post": {
                "summary": "Verify the address with the mailed token",
                "requestBody": _body(["token"], token=_TOKEN),
                "responses": {
                    "204": {"description": "Verified"}, "200": done, **_BASE_ERRORS,
                    "400": _error("invalid_email_token or invalid_request", page=True),
                },
            },
        },
        f"{p}/verify-email/resend": {
            "post": {
                "summary": "Mail a new verification link (to an unverified account only)",
                "requestBody": _body(["email"], email=_EMAIL),
                "responses": {"202": _PENDING, **_BASE_ERRORS, "429": _error("rate_limited", retry=True)},
            }
        },
        f"{p}/password/forgot": {
            "post": {
                "summary": "Mail a reset link (to an enabled account only)",
                "requestBody": _body(["email"], email=_EMAIL),
                "responses": {"202": _PENDING, **_BASE_ERRORS, "429": _error("rate_limited", retry=True)},
            }
        },
        f"{p}/password/reset": {
            "post": {
                "summary": "Set a new password with the mailed token; every session of the user is revoked",
                "requestBody": _body(["token", "password"], token=_TOKEN, password=_PASSWORD),
                "responses": {
                    "204": {"description": "Password set"}, "200": done, **_BASE_ERRORS,
                    "400": _error("invalid_email_token or invalid_request", page=True),
                },
            }
        },
        f"{p}/reset-password": _page_get("The page a reset link opens"),
        f"{p}/password/change": {
            "post": {
                "summary": "Change the password; the caller's other sessions are revoked, this one kept",
                "security": [{"bearer": []}, {"accessCookie": []}],
                "requestBody": _body(["current_password", "password"], current_password=_PASSWORD, password=_PASSWORD),
                "responses": {
                    "204": {"description": "Password changed"}, **_BASE_ERRORS,
                    "401": {**_error("missing_token or invalid_token"),
                            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}},
                    "403": _error("invalid_credentials (wrong current password) or csrf_failed"),
                    "429": _error("rate_limited", retry=True),
                },
            }
        },
    }
