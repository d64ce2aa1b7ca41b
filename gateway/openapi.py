"""The OpenAPI 3.1 description of the gateway's own endpoints, built from the live config.

Must not: import aiohttp or describe anything the handlers do not do (tests/test_openapi.py and
schemathesis hold it to the code).
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.config import Config
from gateway.mfa.openapi import MFA_REQUIRED, mfa_paths

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error", "error_description"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
_TOKENS = {
    "type": "object",
    "required": ["token_type", "expires_in"],
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer", "minimum": 0},
        "refresh_token": {"type": "string"},
    },
}
_SESSION = {
    "type": "object",
    "required": ["id", "created_at", "last_used_at", "expires_at", "user_agent", "ip", "current"],
    "properties": {
        "id": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "last_used_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "user_agent": {"type": "string"},
        "ip": {"type": "string"},
        "current": {"type": "boolean"},
    },
}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        out["headers"] = headers
    return out


_WWW_AUTH = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
_RETRY = {"Retry-After": {"schema": {"type": "string"}, "required": True}}


def _common_errors() -> dict[str, Any]:
    return {
        "400": _error("Malformed request (bad body, duplicated Authorization header, token in URL)"),
        "403": _error("Cross-site request refused (csrf_failed)"),
        "405": _error("Method not allowed", {"Allow": {"schema": {"type": "string"}, "required": True}}),
    }


def openapi_document(cfg: Config) -> dict[str, Any]:
    """The document for this configuration (its auth prefix and cookie names)."""
    p = cfg.server.auth_prefix
    refresh_cookie = cfg.cookies.refresh_name
    bearer = [{"bearer": []}, {"accessCookie": []}]
    login_body = {
        "type": "object",
        "required": ["email", "password"],
        "properties": {
            "email": {"type": "string", "maxLength": 254},
            "password": {"type": "string", "minLength": 1, "maxLength": 1024},
            "remember_me": {"type": "boolean"},
            "refresh_in_body": {"type": "boolean"},
        },
    }
    token_ok = {
        "description": "Tokens issued",
        "headers": {"Cache-Control": {"schema": {"const": "no-store"}, "required": True}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Tokens"}}},
    }
    no_content = {"description": "Done; gateway cookies cleared"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "authgateway", "version": __version__, "description": "The gateway's own endpoints."},
        "paths": {
            f"{p}/login": {
                "post": {
                    "summary": "Log in with email and password",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": login_body},
                            "application/x-www-form-urlencoded": {"schema": login_body},
                        },
                    },
                    "responses": {
                        "200": {
                            **token_ok,
                            "description": "Tokens issued, or (a user with a second factor) mfa_required",
                            "content": {"application/json": {"schema": {"oneOf": [
                                {"$ref": "#/components/schemas/Tokens"}, {"$ref": "#/components/schemas/MfaRequired"},
                            ]}}},
                        },  # fmt: skip
                        **_common_errors(),
                        "401": _error("invalid_credentials", _WWW_AUTH),
                        "429": _error("rate_limited", _RETRY),
                    },
                }
            },
            f"{p}/refresh-token": {
                "post": {
                    "summary": "Rotate a refresh token (cookie or JSON body; the body wins)",
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"refresh_token": {"type": "string"}}}
                            }
                        },
                    },
                    "parameters": [{"name": refresh_cookie, "in": "cookie", "required": False, "schema": {"type": "string"}}],
                    "responses": {
                        "200": token_ok,
                        **_common_errors(),
                        "401": _error("missing_refresh_token", _WWW_AUTH),
                        "403": _error("invalid_refresh_token, refresh_token_reused or csrf_failed"),
                        "429": _error("rate_limited", _RETRY),
                    },
                }
            },
            f"{p}/logout": {
                "post": {
                    "summary": "Revoke the current session (refresh token, else the access token's sid); idempotent",
                    "responses": {"204": no_content, **_common_errors()},
                }
            },
            f"{p}/logout-all": {
                "post": {
                    "summary": "Revoke every session of the caller",
                    "security": bearer,
                    "responses": {"204": no_content, **_common_errors(), "401": _error("missing_token or invalid_token", _WWW_AUTH)},
                }
            },
            f"{p}/sessions": {
                "get": {
                    "summary": "The caller's live sessions",
                    "security": bearer,
                    "responses": {
                        "200": {
                            "description": "Live sessions",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["sessions"],
                                        "properties": {"sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}},
                                    }
                                }
                            },
                        },
                        **_common_errors(),
                        "401": _error("missing_token or invalid_token", _WWW_AUTH),
                    },
                }
            },
            f"{p}/sessions/{{id}}": {
                "delete": {
                    "summary": "Revoke one of the caller's sessions",
                    "security": bearer,
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "204": no_content,
                        **_common_errors(),
                        "401": _error("missing_token or invalid_token", _WWW_AUTH),
                        "404": _error("not the caller's session"),
                    },
                }
            },
            **mfa_paths(p),
        },
        "components": {
            "schemas": {"Error": _ERROR, "Tokens": _TOKENS, "Session": _SESSION, "MfaRequired": MFA_REQUIRED},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "accessCookie": {"type": "apiKey", "in": "cookie", "name": cfg.cookies.access_name},
            },
        },
    }
