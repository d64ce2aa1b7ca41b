"""The real upstream servers of the compatibility matrix, each a separate process on a free port.

Each app answers the same paths under any one-segment prefix (`/api/whoami`, `/public/whoami`, ...):
`whoami` (identity and forwarded values as its framework's idiomatic API reads them), `upload`
(length and SHA-256 of the body), `download?bytes=N`, `status/CODE`, `crash`, and `ws` where the
framework has WebSockets. The CASE_INSENSITIVE ones (Express, and Koa for these rows only) also
answer `/admin/whoami`, in any case, and `/_seen`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.support import free_port, missing_service

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"


@dataclass(frozen=True)
class Upstream:
    name: str
    framework: str
    server: str
    websocket: bool
    # Whether the server reads a chunked request body (bodies over server.buffer_request_body stay chunked).
    reads_chunked: bool

    def command(self, port: int) -> tuple[list[str], dict[str, str]]:
        py = sys.executable
        if self.name == "wsgiref":
            return [py, "wsgiref_app.py", str(port)], {}
        if self.name in ("flask", "django"):
            app = "flask_app:app" if self.name == "flask" else "django_app:application"
            return [py, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread", "--threads", "8",
                    "--log-level", "warning", app], {}  # fmt: skip
        if self.name == "starlette":
            return [py, "-m", "uvicorn", "starlette_app:app", "--host", "127.0.0.1", "--port", str(port),
                    "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1", "--log-level", "warning"], {}  # fmt: skip
        if self.name in ("express", "koa"):
            node = shutil.which("node")
            if node is None:
                missing_service("node", "`node` is not on PATH")
            if not (NODE_DIR / "node_modules" / self.name).is_dir():
                missing_service("node", "tests/upstreams/node has no node_modules (run `npm ci` there)")
            script = "node/app.js" if self.name == "express" else "node/koa_app.js"
            return [node, script, str(port)], {"NODE_ENV": "production"}
        if self.name == "php":
            php = shutil.which("php")
            if php is None:
                missing_service("php", "`php` is not on PATH (Debian package php-cli)")
            # enable_post_data_reading=0: php://input streams the body instead of PHP reading it whole first.
            return [php, "-d", "enable_post_data_reading=0", "-d", "display_errors=0", "-d", "log_errors=0",
                    "-S", f"127.0.0.1:{port}", "router.php"], {"PHP_CLI_SERVER_WORKERS": "4"}  # fmt: skip
        raise AssertionError(self.name)


UPSTREAMS = [
    Upstream("wsgiref", "plain WSGI", "stdlib wsgiref", websocket=False, reads_chunked=False),
    Upstream("flask", "Flask + ProxyFix", "gunicorn", websocket=False, reads_chunked=True),
    Upstream("django", "Django", "gunicorn", websocket=False, reads_chunked=False),
    Upstream("starlette", "Starlette", "uvicorn", websocket=True, reads_chunked=True),
    Upstream("express", "Express + ws", "Node http", websocket=True, reads_chunked=True),
    Upstream("php", "PHP ($_SERVER)", "php -S", websocket=False, reads_chunked=True),
]

# Servers that route without case by default, each with an /admin/whoami that also answers
# /ADMIN/whoami and a GET /_seen listing the targets it was sent: the matrix's case rows.
# Koa answers only whoami and /_seen, so it is not in UPSTREAMS.
CASE_INSENSITIVE = [
    next(u for u in UPSTREAMS if u.name == "express"),
    Upstream("koa", "Koa + @koa/router", "Node http", websocket=False, reads_chunked=True),
]


@contextmanager
def running(upstream: Upstream, *, timeout: float = 30) -> Iterator[str]:
    """Starts the upstream and yields its base URL once it answers."""
    port = free_port()
    argv, env = upstream.command(port)
    log = tempfile.TemporaryFile()
    # Its own process group: some servers fork workers (PHP_CLI_SERVER_WORKERS) that outlive a
    # signal sent to the parent alone, and were left running after the suite.
    proc = subprocess.Popen(argv, cwd=HERE, env={**os.environ, **env}, stdout=log, stderr=log, start_new_session=True)
    try:
        _wait_port(port, proc, log, timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        _signal_group(proc, signal.SIGKILL)  # workers that ignored SIGTERM or outlived their parent
        log.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: IO[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"upstream exited with {proc.returncode}: {log.read().decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"upstream on port {port} did not come up within {timeout}s")
