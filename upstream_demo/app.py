"""Owns the demo upstream's routes: echo, streaming, slow, WebSocket, cookie, gzip and redirect endpoints.

Must not: import anything from `gateway`, or know about tokens, authentication or proxy behaviour.
"""

import asyncio
import gzip
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

__all__ = [
    "CHUNK_SIZE",
    "MAX_SLOW_SECONDS",
    "MAX_STREAM_BYTES",
    "create_app",
    "describe_request",
]

CHUNK_SIZE = 64 * 1024
MAX_STREAM_BYTES = 10 * 1024**3
MAX_SLOW_SECONDS = 300.0
DEFAULT_STREAM_BYTES = 1024

# One shared chunk so streaming any size costs the same memory; bytes is immutable so sharing is safe.
_PATTERN_CHUNK = (b"0123456789abcdef" * (CHUNK_SIZE // 16))[:CHUNK_SIZE]
# Digits only: int() would also accept "+5", " 5" and "1_000", which a strict demo should refuse.
_DIGITS = re.compile(r"[0-9]{1,12}")
# Cookie pieces that would break the header or smuggle attributes are refused.
_COOKIE_FORBIDDEN = re.compile(r"[\x00-\x20\x7f;,\"\\]")


def _bad_request(description: str) -> web.Response:
    """Build the 400 JSON error body shared by all parameter checks."""
    return web.json_response(
        {"error": "invalid_request", "error_description": description},
        status=400,
    )


def _split_raw_target(raw_target: str) -> tuple[str, str]:
    """Split the request target as received into raw path and raw query."""
    path, _sep, query = raw_target.partition("?")
    return path, query


def _raw_headers(request: web.Request) -> dict[str, str]:
    """Collect headers keeping the sender's name case and joining repeats with ", "."""
    # request.headers canonicalises well-known names (e.g. "content-type" -> "Content-Type"),
    # so the raw pairs are the only place the on-the-wire case survives.
    first_name: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    for raw_name, raw_value in request.raw_headers:
        # Same decoding aiohttp uses for request.headers, so odd bytes round-trip rather than crash.
        name = raw_name.decode("utf-8", "surrogateescape")
        value = raw_value.decode("utf-8", "surrogateescape")
        key = name.lower()
        first_name.setdefault(key, name)
        values.setdefault(key, []).append(value)
    return {first_name[key]: ", ".join(vals) for key, vals in values.items()}


async def describe_request(request: web.Request) -> dict[str, Any]:
    """Consume the body in bounded chunks and describe exactly what arrived."""
    digest = hashlib.sha256()
    length = 0
    # Streaming keeps memory constant even for multi-gigabyte uploads.
    async for chunk in request.content.iter_chunked(CHUNK_SIZE):
        digest.update(chunk)
        length += len(chunk)
    # raw_path, not request.path: the latter is decoded/normalised and would hide what a proxy sent.
    path, query = _split_raw_target(request.raw_path)
    return {
        "method": request.method,
        "path": path,
        "query": query,
        "headers": _raw_headers(request),
        "body_length": length,
        "body_sha256": digest.hexdigest(),
    }


async def echo(request: web.Request) -> web.Response:
    """Answer any request with a JSON description of itself."""
    return web.json_response(await describe_request(request))


async def public_hello(request: web.Request) -> web.Response:
    """Answer a fixed greeting plus the echo description of the request."""
    return web.json_response({"hello": "world", "request": await describe_request(request)})


async def stream(request: web.Request) -> web.StreamResponse:
    """Stream the requested number of pattern bytes with an exact Content-Length."""
    raw = request.query.get("bytes")
    if raw is None:
        total = DEFAULT_STREAM_BYTES
    else:
        if not _DIGITS.fullmatch(raw) or int(raw) > MAX_STREAM_BYTES:
            return _bad_request(f"bytes must be an integer in 0..{MAX_STREAM_BYTES}")
        total = int(raw)
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(total)},
    )
    await response.prepare(request)
    if request.method == "HEAD":
        # aiohttp does not hold back body writes on a streamed HEAD answer; send none.
        await response.write_eof()
        return response
    view = memoryview(_PATTERN_CHUNK)
    remaining = total
    while remaining > 0:
        size = min(remaining, CHUNK_SIZE)
        # Slicing a memoryview avoids copying the final short chunk; write() also waits for drain.
        await response.write(view[:size])
        remaining -= size
    await response.write_eof()
    return response


async def slow(request: web.Request) -> web.Response:
    """Sleep for the requested number of seconds, then answer."""
    raw = request.query.get("seconds", "0")
    try:
        seconds = float(raw)
    except ValueError:
        return _bad_request(f"seconds must be a number in 0..{MAX_SLOW_SECONDS:g}")
    # isfinite first: NaN compares false against both bounds and would slip through.
    if not math.isfinite(seconds) or not 0.0 <= seconds <= MAX_SLOW_SECONDS:
        return _bad_request(f"seconds must be a number in 0..{MAX_SLOW_SECONDS:g}")
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})


async def websocket_echo(request: web.Request) -> web.WebSocketResponse:
    """Echo WebSocket messages; "close:<code>" closes with that code."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            text: str = message.data
            if text.startswith("close:"):
                try:
                    code = int(text.removeprefix("close:"))
                except ValueError:
                    await ws.send_str(text)
                    continue
                # The code is sent verbatim so tests can see whether a proxy preserves it.
                await ws.close(code=code, message=b"requested")
                break
            await ws.send_str(text)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
        elif message.type is WSMsgType.ERROR:
            break
    return ws


async def set_cookie(request: web.Request) -> web.Response:
    """Answer with the requested cookie plus a fixed "demo" cookie."""
    name = request.query.get("name", "")
    value = request.query.get("value", "")
    if not name or "=" in name or _COOKIE_FORBIDDEN.search(name) or _COOKIE_FORBIDDEN.search(value):
        return _bad_request("name is required; name and value must not contain spaces, controls or ;,\"\\")
    response = web.json_response({"ok": True})
    # Added raw rather than via set_cookie() so the header text is exactly predictable for tests.
    response.headers.add("Set-Cookie", f"{name}={value}; Path=/")
    response.headers.add("Set-Cookie", "demo=1; Path=/")
    return response


async def gzip_body(request: web.Request) -> web.Response:
    """Answer a gzip-compressed JSON body with Content-Encoding set by hand."""
    payload = json.dumps({"compressed": True, "message": "hello from gzip"}).encode()
    # Pre-compressed bytes plus a manual header, so aiohttp's own compression never runs.
    return web.Response(
        body=gzip.compress(payload),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )


async def redirect(request: web.Request) -> web.Response:
    """Answer a 302 pointing at the whoami endpoint."""
    return web.Response(status=302, headers={"Location": "/api/whoami"})


async def admin(request: web.Request) -> web.Response:
    """A stand-in admin API: it answers whoever reaches it; who may is the gateway's route policy."""
    return web.json_response({"admin": True, "request": await describe_request(request)})


_PAGE = Path(__file__).with_name("static") / "index.html"


async def demo_page(request: web.Request) -> web.Response:
    """The demo page: plain HTML and JS that logs in through the gateway and calls the API."""
    return web.Response(body=_PAGE.read_bytes(), content_type="text/html", headers={"Cache-Control": "no-cache"})


def create_app() -> web.Application:
    """Build the demo upstream application."""
    app = web.Application()
    app.router.add_get("/api/whoami", echo)
    app.router.add_route("*", "/api/echo", echo)
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/api/slow", slow)
    app.router.add_get("/api/ws", websocket_echo)
    app.router.add_get("/api/set-cookie", set_cookie)
    app.router.add_get("/api/gzip", gzip_body)
    app.router.add_get("/api/redirect", redirect)
    app.router.add_get("/public/hello", public_hello)
    app.router.add_route("*", "/api/admin", admin)
    app.router.add_route("*", "/api/admin/{tail:.*}", admin)
    app.router.add_get("/", demo_page)
    # Registered last: the router matches a decoded path, so odd raw paths (%2F, //) must still
    # land somewhere that echoes the raw form. Also covers /api/*, /public/*, /base/* and "/".
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
