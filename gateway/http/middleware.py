"""The one middleware: renders GatewayError as JSON, echoes X-Request-Id, counts and logs each request.

Must not: decide anything about auth or routing; it renders what handlers raise, and its access
log line never holds a token, cookie or password (ids and numbers only).
"""

from __future__ import annotations

import logging
import os
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.core.errors import GatewayError
from gateway.core.log import access_log, proxy_log
from gateway.core.metrics import Metrics
from gateway.http.keys import PRINCIPAL, REQUEST_ID, ROUTE_LABEL, UPSTREAM_SECONDS
from gateway.http.responses import error_response

__all__ = ["error_middleware", "request_id"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def request_id(request: web.BaseRequest) -> str:
    """The client's X-Request-Id when it is 1-128 safe characters, else a new one."""
    given = request.headers.get("X-Request-Id")
    if given is not None and _REQUEST_ID.match(given):
        return given
    return os.urandom(16).hex()  # as unique as a uuid4, at a third of the cost on the hot path


def error_middleware(*, metrics: Metrics | None = None, log_access: bool = True) -> Middleware:
    """Renders GatewayError as JSON, hides unexpected failures behind a 500, sets X-Request-Id."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
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
        route = request.get(ROUTE_LABEL, "none")
        if metrics is not None:
            metrics.request(route, request.method, response.status)
        # isEnabledFor is cached by logging; skipping the record's construction matters per request.
        if log_access and access_log.isEnabledFor(logging.INFO):
            principal = request.get(PRINCIPAL)
            upstream = request.get(UPSTREAM_SECONDS)
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": rid,
                        "route": route,
                        "method": request.method,
                        "path": request.path,
                        "status": response.status,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                        "upstream_ms": round(upstream * 1000, 2) if upstream is not None else None,
                        "user_id": principal.sub if principal else None,
                        "session_id": principal.sid if principal else None,
                        "client": request.remote,
                    }
                },
            )
        return response

    return middleware
