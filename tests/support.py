"""Test helpers shared by the suites: a fake clock, token minting, config building, gateway processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import jwt
import pytest

from gateway.config import Config, parse_config

SECRET = "test-secret-test-secret-test-secret-0123456789"
OLD_SECRET = "old-secret-old-secret-old-secret-0123456789ab"
ORIGIN_HOST = "gateway.test"


def missing_service(name: str, problem: str) -> NoReturn:
    """A service a test needs is absent: a failure, unless GATEWAY_ALLOW_MISSING lists `name` (then a skip).

    Names in use: postgres, browser, smtp, oidc, php, node. The README's test command and CI run the
    same tests, so a machine without a service fails loudly instead of passing with half the suite.
    """
    allowed = {n.strip() for n in os.environ.get("GATEWAY_ALLOW_MISSING", "").split(",") if n.strip()}
    if name in allowed:
        pytest.skip(f"{name} missing (allowed by GATEWAY_ALLOW_MISSING): {problem}")
    pytest.fail(f"{name} is required by this test but {problem}; install it or set GATEWAY_ALLOW_MISSING={name}")


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")


@asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[Any]:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser), closed on exit.
    A missing browser or Playwright fails the test unless GATEWAY_ALLOW_MISSING names `browser`."""
    if not CHROMIUM.exists():
        missing_service("browser", f"{CHROMIUM} is missing (Debian package `chromium`)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing_service("browser", "the playwright Python package is not installed")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args], headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def build_config(tmp_path: Path, upstream_url: str, **tables: Any) -> Config:
    """A Config like a TOML file would give, routes pointing at `upstream_url`; `tables` override whole tables."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "store": {"url": f"sqlite:///{tmp_path / 'gateway.db'}"},
        "tokens": {"secret": SECRET, "access_ttl": "5m", "reuse_grace": "10s", "leeway": "0s"},
        "routes": [
            {"prefix": "/api", "upstream": upstream_url, "auth": "required", "timeout": "5s"},
            {"prefix": "/public", "upstream": upstream_url, "auth": "public"},
            {"prefix": "/opt", "upstream": upstream_url + "/api/echo", "auth": "optional", "strip_prefix": True},
        ],
    }
    for name, value in tables.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return parse_config(data, base=tmp_path, source="test.toml", env={})


def mint(
    *,
    secret: str = SECRET,
    algorithm: str = "HS256",
    kid: str | None = None,
    headers: dict[str, Any] | None = None,
    now: float | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """An access token as a test wants it: sound by default, every field overridable or droppable."""
    from gateway.config import TokenConfig
    from gateway.tokens.keyring import KeyRing

    # A few seconds in the past by default: the gateway's FakeClock was frozen when the test began.
    t = int(time.time() - 5 if now is None else now)
    body: dict[str, Any] = {
        "iss": "gateway", "aud": "api", "sub": "user-1", "sid": "session-1", "jti": uuid.uuid4().hex,
        "iat": t, "exp": t + 300, "email": "user@example.com",
    }  # fmt: skip
    body.update(claims)
    for name in drop:
        body.pop(name, None)
    if kid is None and algorithm == "HS256":
        kid = KeyRing(TokenConfig(secret=secret)).current_kid
    hdr: dict[str, Any] = {"typ": "at+jwt"}
    if kid is not None:
        hdr["kid"] = kid
    hdr.update(headers or {})
    return jwt.encode(body, secret, algorithm=algorithm, headers=hdr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@contextmanager
def gateway_process(config_path: Path, port: int, *, env: dict[str, str] | None = None, timeout: float = 20) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m gateway serve` as a real separate process, ready when /healthz answers."""
    # stderr goes to a file, not a pipe: an unread pipe fills up and would stall a chatty gateway.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=timeout, proc=proc, log=log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def wait_http(url: str, *, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = ""
            if log is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
            raise RuntimeError(f"process exited with {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout}s")
