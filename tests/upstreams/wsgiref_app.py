"""Plain WSGI on the stdlib's wsgiref server: what `environ` says, as a bare WSGI app reads it.

Run: python wsgiref_app.py PORT. No proxy awareness: forwarded values are the raw CGI variables.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

PATTERN = b"0123456789abcdef" * 4096


def _json(start: Callable[..., Any], status: str, data: object) -> list[bytes]:
    body = json.dumps(data).encode()
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("X-Upstream", "wsgiref")])
    return [body]


def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path.endswith("/whoami"):
        email = environ.get("HTTP_X_USER_EMAIL")
        return _json(start, "200 OK", {
            "user_id": environ.get("HTTP_X_USER_ID"),
            "email": unquote(email) if email is not None else None,
            "session_id": environ.get("HTTP_X_SESSION_ID"),
            "scheme": environ.get("HTTP_X_FORWARDED_PROTO", environ["wsgi.url_scheme"]),
            "host": environ.get("HTTP_X_FORWARDED_HOST", environ.get("HTTP_HOST")),
            "remote_addr": environ.get("HTTP_X_FORWARDED_FOR", environ.get("REMOTE_ADDR")),
            "script_root": environ.get("HTTP_X_FORWARDED_PREFIX", environ.get("SCRIPT_NAME", "")),
            "environ": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
        })  # fmt: skip
    if path.endswith("/upload"):
        digest, length = hashlib.sha256(), 0
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
        stream = environ["wsgi.input"]
        while remaining > 0:
            chunk = stream.read(min(65536, remaining))
            if not chunk:
                break
            digest.update(chunk)
            length += len(chunk)
            remaining -= len(chunk)
        return _json(start, "200 OK", {"length": length, "sha256": digest.hexdigest()})
    if path.endswith("/download"):
        size = int(parse_qs(environ.get("QUERY_STRING", ""))["bytes"][0])
        start("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return _pattern(size)
    if "/status/" in path:
        code = int(path.rsplit("/", 1)[1])
        return _json(start, f"{code} Upstream Says", {"upstream_error": code})
    if path.endswith("/crash"):
        raise RuntimeError("crash on purpose")
    start("404 Not Found", [("Content-Type", "text/plain")])
    return [b"wsgiref: no such path"]


def _pattern(size: int) -> Iterable[bytes]:
    while size > 0:
        piece = PATTERN[: min(size, len(PATTERN))]
        size -= len(piece)
        yield piece


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass


if __name__ == "__main__":
    make_server("127.0.0.1", int(sys.argv[1]), app, server_class=_Server, handler_class=_QuietHandler).serve_forever()
