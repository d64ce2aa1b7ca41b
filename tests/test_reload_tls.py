"""SIGHUP reloads routes, limits, keys and the TLS certificate without dropping established connections."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import OLD_SECRET, SECRET, free_port, gateway_process, mint, wait_http


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def upstream_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "upstream_demo", "--port", str(port)], stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/public/hello", timeout=15)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def _toml(tmp_path: Path, port: int, upstream: int, *, secret: str, previous: str = "", extra_route: str = "", login: str = "10/minute", tls: str = "") -> str:
    prev = f'previous_secrets = ["{previous}"]' if previous else ""
    return f"""
[server]
port = {port}
{tls}
[store]
url = "sqlite:///{tmp_path / 'r.db'}"
[tokens]
secret = "{secret}"
{prev}
[limits]
login = "{login}"
[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:{upstream}"
{extra_route}
"""


@contextmanager
def _serving(config: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`gateway serve` with its log (JSON lines on stderr) in a file the test reads."""
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)], stderr=sink)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=20, proc=proc)
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _log_lines(log: Path, start: str, *, count: int, within: float = 10) -> list[dict[str, Any]]:
    """The JSON log records whose message starts with `start`, once there are `count` of them (bounded wait)."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and str(record.get("message", "")).startswith(start):
                    found.append(record)
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        await asyncio.sleep(0.05)


async def test_sighup_reloads_routes_and_keys_keeping_open_websockets(tmp_path: Path, upstream_port: int) -> None:
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_toml(tmp_path, port, upstream_port, secret=OLD_SECRET))
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    with _serving(cfg, port, log) as proc:
        async with aiohttp.ClientSession() as http:
            old_token = mint(secret=OLD_SECRET)
            ws = await http.ws_connect(f"{base}/api/ws", headers={"Authorization": f"Bearer {old_token}"})
            async with http.get(f"{base}/public/hello") as r:
                assert r.status == 404
            # New signing key (old one kept for verification) and a new public route.
            cfg.write_text(_toml(
                tmp_path, port, upstream_port, secret=SECRET, previous=OLD_SECRET,
                extra_route=f'[[routes]]\nprefix = "/public"\nupstream = "http://127.0.0.1:{upstream_port}"\nauth = "public"',
            ))  # fmt: skip
            proc.send_signal(signal.SIGHUP)
            status = 0
            for _ in range(50):
                async with http.get(f"{base}/public/hello") as r:
                    status = r.status
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200
            for token in (old_token, mint(secret=SECRET)):
                async with http.get(f"{base}/api/whoami", headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200
            # The WebSocket opened before the reload still works.
            await ws.send_str("still here")
            msg = await ws.receive(timeout=5)
            assert msg.data == "still here"
            await ws.close()
            # A broken config is refused and the gateway keeps serving the last good one.
            assert await _log_lines(log, "reloaded ", count=1)
            cfg.write_text("[server]\nport = 'not a number'\n")
            proc.send_signal(signal.SIGHUP)
            (refusal,) = await _log_lines(log, "reload refused", count=1)
            assert refusal["level"] == "ERROR"
            assert "server.port" in refusal["message"] and "still running the old config" in refusal["message"]
            # Still the reloaded config (its new route and keys), not the broken one and not the first one.
            async with http.get(f"{base}/public/hello") as r:
                assert r.status == 200
            async with http.get(f"{base}/api/whoami", headers={"Authorization": f"Bearer {mint(secret=SECRET)}"}) as r:
                assert r.status == 200
            assert await _log_lines(log, "reloaded ", count=1)  # no second successful reload was logged
        assert proc.poll() is None


async def test_tls_termination_hsts_and_certificate_reload(tmp_path: Path, upstream_port: int) -> None:
    port = free_port()
    first_cert, first_key = _self_signed(tmp_path, "first")
    second_cert, second_key = _self_signed(tmp_path, "second")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_cert.write_bytes(first_cert.read_bytes())
    live_key.write_bytes(first_key.read_bytes())
    tls = f'tls_cert = "{live_cert}"\ntls_key = "{live_key}"\nhsts = "max-age=63072000; includeSubDomains"'
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_toml(tmp_path, port, upstream_port, secret=SECRET, tls=tls))

    def client_ctx(cert: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(cert))
        return ctx

    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=client_ctx(first_cert)) as r:
                        assert r.status == 200
                        assert r.headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the TLS gateway did not come up")
            live_cert.write_bytes(second_cert.read_bytes())
            live_key.write_bytes(second_key.read_bytes())
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=client_ctx(second_cert)) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=client_ctx(first_cert)):
                    pass
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_sighup_reloads_limits(tmp_path: Path, upstream_port: int) -> None:
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_toml(tmp_path, port, upstream_port, secret=SECRET, login="1/minute"))
    base = f"http://127.0.0.1:{port}"
    body = {"email": "nobody@example.com", "password": "wrong-password"}
    with gateway_process(cfg, port) as proc:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(2):
                async with http.post(f"{base}/auth/login", json=body) as r:
                    statuses.append(r.status)
            assert statuses == [401, 429]
            cfg.write_text(_toml(tmp_path, port, upstream_port, secret=SECRET, login="100/minute"))
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            async with http.post(f"{base}/auth/login", json=body) as r:
                assert r.status == 401
