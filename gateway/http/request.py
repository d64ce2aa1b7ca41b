"""What every route module reads from a request: bounded bodies, flags, and the CSRF rule of a POST without a token.

Must not: know any capability's fields or rules; it parses and bounds, the handlers decide.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from gateway.config import Config
from gateway.core.errors import BadRequest, PayloadTooLarge, RequestTimeout
from gateway.http.auth import check_origin

__all__ = [
    "AUTH_BODY_LIMIT",
    "AUTH_BODY_TIMEOUT",
    "Handler",
    "check_anonymous_post",
    "flag",
    "read_body",
    "read_raw_body",
    "uses_cookies",
]

AUTH_BODY_LIMIT = 16 * 1024


AUTH_BODY_TIMEOUT = 10.0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_TRUE = {"1", "true", "on", "yes"}


async def read_raw_body(request: web.Request) -> bytes:
    """The whole body of an /auth request: over 16 KiB a 413, slower than 10 s a 408."""
    if request.content_length is not None and request.content_length > AUTH_BODY_LIMIT:
        raise PayloadTooLarge(f"the body is larger than {AUTH_BODY_LIMIT} bytes")
    if request.content.is_eof():
        # The whole body is already here (a small body usually arrives with the headers): nothing to
        # wait for, so no timer to arm and cancel on every refresh.
        raw = request.content.read_nowait(AUTH_BODY_LIMIT + 1)
        if len(raw) > AUTH_BODY_LIMIT:
            raise PayloadTooLarge(f"the body is larger than {AUTH_BODY_LIMIT} bytes")
        return raw
    raw = b""
    try:
        async with asyncio.timeout(AUTH_BODY_TIMEOUT):
            # read(n) returns what has arrived so far, so a body split over packets needs the loop.
            while len(raw) <= AUTH_BODY_LIMIT and (chunk := await request.content.read(AUTH_BODY_LIMIT + 1 - len(raw))):
                raw += chunk
    except TimeoutError as exc:
        raise RequestTimeout("the request body did not arrive in time") from exc
    if len(raw) > AUTH_BODY_LIMIT:
        raise PayloadTooLarge(f"the body is larger than {AUTH_BODY_LIMIT} bytes")
    return raw


async def read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object or a urlencoded form; anything else is a 400, over 16 KiB a 413, too slow a 408."""
    raw = await read_raw_body(request)
    if not raw.strip():
        return {}
    ctype = request.content_type
    # A body that opens with "{" is JSON whatever its label: curl -d labels everything as a form.
    if raw.lstrip().startswith(b"{"):
        ctype = "application/json"
    if ctype == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=32)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("the form body is malformed") from exc
        return {k: v[-1] for k, v in form.items()}
    if ctype in ("application/json", "application/octet-stream", "") or ctype.endswith("+json"):
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadRequest("the body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise BadRequest("the JSON body must be an object")
        return data
    raise BadRequest("the body must be application/json or application/x-www-form-urlencoded")


def flag(data: dict[str, Any], name: str) -> bool:
    """A boolean field, given as JSON true/false or a form's "1", "true", "on", "yes"; anything else is a 400."""
    value = data.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    raise BadRequest(f"{name} must be a boolean")


def uses_cookies(request: web.Request, cfg: Config) -> bool:
    """Whether the request carries either gateway cookie (then it comes from a browser and CSRF rules apply)."""
    return cfg.cookies.access_name in request.cookies or cfg.cookies.refresh_name in request.cookies


def check_anonymous_post(request: web.Request, cfg: Config) -> None:
    """The CSRF rule of a POST that carries no access token (login, its second step, sign-up, password
    reset): a browser sends Origin (or Referer), or the gateway's cookies, and then the origin must be
    ours; other clients send none of them and pass."""
    if "Origin" in request.headers or "Referer" in request.headers or uses_cookies(request, cfg):
        check_origin(request, cfg)
