"""Flask behind Werkzeug's ProxyFix, on gunicorn: what `request.headers` and ProxyFix report.

Run: gunicorn --chdir tests/upstreams flask_app:app. ProxyFix believes one hop of every
X-Forwarded-* header (For, Proto, Host, Port, Prefix), as a Flask app behind a proxy is told to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from urllib.parse import unquote

from flask import Flask, Response, abort, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix

PATTERN = b"0123456789abcdef" * 4096

app = Flask(__name__)
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)  # type: ignore[method-assign]


@app.after_request
def mark(response: Response) -> Response:
    response.headers["X-Upstream"] = "flask"
    return response


@app.get("/<prefix>/whoami")
def whoami(prefix: str) -> Response:
    email = request.headers.get("X-User-Email")
    return jsonify(
        user_id=request.headers.get("X-User-Id"),
        email=unquote(email) if email is not None else None,
        session_id=request.headers.get("X-Session-Id"),
        environ_user_id=request.environ.get("HTTP_X_USER_ID"),
        scheme=request.scheme,
        secure=request.is_secure,
        host=request.host,
        remote_addr=request.remote_addr,
        script_root=request.script_root,
        headers=dict(request.headers),
    )


@app.post("/<prefix>/upload")
def upload(prefix: str) -> Response:
    digest, length = hashlib.sha256(), 0
    while chunk := request.stream.read(65536):
        digest.update(chunk)
        length += len(chunk)
    return jsonify(length=length, sha256=digest.hexdigest())


@app.get("/<prefix>/download")
def download(prefix: str) -> Response:
    size = int(request.args["bytes"])

    def body() -> Iterator[bytes]:
        left = size
        while left > 0:
            piece = PATTERN[: min(left, len(PATTERN))]
            left -= len(piece)
            yield piece

    return Response(body(), mimetype="application/octet-stream", headers={"Content-Length": str(size)})


@app.get("/<prefix>/status/<int:code>")
def status(prefix: str, code: int) -> tuple[Response, int]:
    return jsonify(upstream_error=code), code


@app.get("/<prefix>/crash")
def crash(prefix: str) -> Response:
    abort(500)
