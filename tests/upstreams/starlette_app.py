"""Starlette on uvicorn (with --proxy-headers): what `request.headers`, `request.url` and
`request.client` report, plus a WebSocket that echoes and tells which identity it saw.

Run: uvicorn --app-dir tests/upstreams starlette_app:app --proxy-headers --forwarded-allow-ips 127.0.0.1
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

PATTERN = b"0123456789abcdef" * 4096
MARK = {"X-Upstream": "starlette"}


async def whoami(request: Request) -> Response:
    email = request.headers.get("x-user-email")
    return JSONResponse({
        "user_id": request.headers.get("x-user-id"),
        "email": unquote(email) if email is not None else None,
        "session_id": request.headers.get("x-session-id"),
        "scheme": request.url.scheme,
        "secure": request.url.scheme == "https",
        "host": request.url.netloc,
        "remote_addr": request.client.host if request.client else None,
        "script_root": request.scope.get("root_path", ""),
        "headers": dict(request.headers),
    }, headers=MARK)  # fmt: skip


async def upload(request: Request) -> Response:
    digest, length = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        length += len(chunk)
    return JSONResponse({"length": length, "sha256": digest.hexdigest()}, headers=MARK)


async def download(request: Request) -> Response:
    size = int(request.query_params["bytes"])

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            piece = PATTERN[: min(left, len(PATTERN))]
            left -= len(piece)
            yield piece

    return StreamingResponse(body(), media_type="application/octet-stream", headers={**MARK, "Content-Length": str(size)})


async def status(request: Request) -> Response:
    code = int(request.path_params["code"])
    return JSONResponse({"upstream_error": code}, status_code=code, headers=MARK)


async def crash(request: Request) -> Response:
    raise RuntimeError("crash on purpose")


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "whoami":
            email = websocket.headers.get("x-user-email")
            await websocket.send_json({"user_id": websocket.headers.get("x-user-id"),
                                       "email": unquote(email) if email else None})  # fmt: skip
        elif message.get("text") is not None:
            await websocket.send_text(message["text"])
        elif message.get("bytes") is not None:
            await websocket.send_bytes(message["bytes"])


app = Starlette(routes=[
    Route("/{prefix}/whoami", whoami),
    Route("/{prefix}/upload", upload, methods=["POST"]),
    Route("/{prefix}/download", download),
    Route("/{prefix}/status/{code:int}", status),
    Route("/{prefix}/crash", crash),
    WebSocketRoute("/{prefix}/ws", ws),
])  # fmt: skip
