"""The OpenAPI 3.1 description of the gateway's own endpoints, built from the live config.

Must not: import aiohttp or describe anything the handlers do not do (tests/test_openapi.py and
schemathesis hold it to the code).
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.accounts.openapi import account_paths
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


# -- machine clients and route policies ------------------------------------------------------------

_CLIENT_TOKEN = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer", "minimum": 0},
        "scope": {"type": "string", "description": "space-separated scopes granted"},
    },
}
_POLICY_NOTE = (
    " Proxied routes may carry an allow/deny policy: a refused caller gets 403 insufficient_scope with"
    ' `WWW-Authenticate: Bearer error="insufficient_scope"`, an anonymous caller on an optional route whose'
    " policy needs an identity 401 missing_token, and a caller who needs a second factor 401"
    ' `WWW-Authenticate: Bearer error="insufficient_user_authentication"` (RFC 9470).'
)


def _client_paths(p: str) -> dict[str, Any]:
    """`POST {prefix}/token`: OAuth 2.0 client credentials (RFC 6749 4.4), errors as RFC 6749 5.2."""
    form = {
        "type": "object",
        "required": ["grant_type"],
        "properties": {
            "grant_type": {"const": "client_credentials"},
            "scope": {"type": "string", "description": "space-separated; omitted: every scope of the client"},
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
        },
    }
    return {
        f"{p}/token": {
            "post": {
                "summary": "Issue an access token to a machine client (client credentials)",
                "security": [{"clientBasic": []}, {}],
                "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": form}}},
                "responses": {
                    "200": {
                        "description": "Token issued (never a refresh token)",
                        "headers": {"Cache-Control": {"schema": {"const": "no-store"}, "required": True}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ClientToken"}}},
                    },
                    "400": _error("invalid_request, unsupported_grant_type or invalid_scope"),
                    "401": _error("invalid_client", _WWW_AUTH),
                    "405": _error("Method not allowed", {"Allow": {"schema": {"type": "string"}, "required": True}}),
                    "408": _error("The body did not arrive in time"),
                    "413": _error("The body is larger than 16 KiB"),
                    "429": _error("Too many failed client authentications (rate_limited)", _RETRY),
                },
            }
        }
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
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "authgateway", "version": __version__, "description": "The gateway's own endpoints." + _POLICY_NOTE},
        "paths": {
            **_client_paths(p),
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
            **account_paths(p),
            **mfa_paths(p),
        },
        "components": {
            "schemas": {"Error": _ERROR, "Tokens": _TOKENS, "Session": _SESSION, "ClientToken": _CLIENT_TOKEN, "MfaRequired": MFA_REQUIRED},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "accessCookie": {"type": "apiKey", "in": "cookie", "name": cfg.cookies.access_name},
                "clientBasic": {"type": "http", "scheme": "basic", "description": "client_id:client_secret, each form-urlencoded first"},
            },
        },
    }
    doc["paths"].update(_federation_paths(cfg))
    return doc


# -- federated login (OpenID Connect) ----------------------------------------------------------------


def _federation_paths(cfg: Config) -> dict[str, Any]:
    """The federated-login endpoints, one set per configured provider (none without providers)."""
    if not cfg.identity_providers:
        return {}
    p = cfg.server.auth_prefix
    redirect = {"description": "Redirect", "headers": {"Location": {"schema": {"type": "string"}, "required": True}}}
    providers = {
        "type": "object",
        "required": ["providers"],
        "properties": {
            "providers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "login_url"],
                    "properties": {"name": {"type": "string"}, "login_url": {"type": "string"}},
                },
            }
        },
    }
    paths: dict[str, Any] = {
        f"{p}/providers": {
            "get": {
                "summary": "The identity providers users can log in with",
                "responses": {"200": {"description": "Providers", "content": {"application/json": {"schema": providers}}}},
            }
        }
    }
    for idp in cfg.identity_providers:
        base = f"{p}/oidc/{idp.name}"
        paths[f"{base}/login"] = {
            "get": {
                "summary": f"Start a login at {idp.name}: 302 to the provider (code + PKCE S256, state, nonce)",
                "parameters": [{"name": "return_to", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {**_common_errors(), "302": redirect, "502": _error("idp_error: the provider is unreachable")},
            }
        }
        paths[f"{base}/callback"] = {
            "get": {
                "summary": f"The answer of {idp.name}: starts a gateway session, 302 to return_to",
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                    for n in ("code", "state", "iss", "error")
                ],
                "responses": {
                    **_common_errors(),
                    "302": redirect,
                    "400": _error("invalid_state (missing, wrong, expired or used flow) or invalid_request"),
                    "403": _error("email_not_verified, domain_not_allowed or account_not_found"),
                    "502": _error("idp_error: the provider failed or its answer does not verify"),
                },
            }
        }
        form = {"type": "object", "required": ["logout_token"], "properties": {"logout_token": {"type": "string"}}}
        paths[f"{base}/backchannel-logout"] = {
            "post": {
                "summary": f"OpenID Back-Channel Logout from {idp.name}: revokes the sessions its login started",
                "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": form}}},
                "responses": {
                    **_common_errors(),
                    "200": {"description": "Done"},
                    "400": _error("invalid_request: not a valid logout token"),
                },
            }
        }
    return paths
