"""The error middleware: the one place that turns a GatewayError into a JSON answer, and echoes X-Request-Id.

Must not: decide anything about auth or routing; it renders what handlers raise.
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import AuthError, GatewayError, MethodNotAllowed, RateLimited, TokenInvalid
from gateway.keys import REQUEST_ID
from gateway.log import proxy_log

__all__ = ["error_middleware", "error_response", "request_id"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def request_id(request: web.BaseRequest) -> str:
    """The client's X-Request-Id when it is 1-128 safe characters, else a new one."""
    given = request.headers.get("X-Request-Id")
    if given is not None and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def error_response(exc: GatewayError) -> web.Response:
    """The JSON error body with the headers its status needs (WWW-Authenticate, Allow, Retry-After)."""
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if isinstance(exc, TokenInvalid):
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{_quote(exc.description)}"'
    elif isinstance(exc, AuthError):
        headers["WWW-Authenticate"] = 'Bearer realm="gateway"'
    elif isinstance(exc, MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allow)
    elif isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    body = {"error": exc.code, "error_description": exc.description or exc.code.replace("_", " ")}
    return web.json_response(body, status=exc.status, headers=headers)


def error_middleware() -> Middleware:
    """Renders GatewayError as JSON, hides unexpected failures behind a 500, sets X-Request-Id."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id(request)
        request[REQUEST_ID] = rid
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:
            # aiohttp raises these itself (e.g. a body over client_max_size); answer them as JSON too.
            if exc.status < 400:
                raise
            code = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed"}.get(exc.status, "invalid_request")
            response = web.json_response({"error": code, "error_description": exc.reason}, status=exc.status)
        except Exception:
            proxy_log.exception("unhandled error request_id=%s path=%s", rid, request.path)
            response = web.json_response(
                {"error": "server_error", "error_description": "internal error"}, status=500
            )
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response

    return middleware
