"""kill -9 in the middle of 200 clients refreshing in a loop loses no session and corrupts nothing."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support import SECRET, free_port, gateway_process

CLIENTS = 200
PASSWORD = "durable-password-1"


def _toml(path: Path, port: int) -> Path:
    path.write_text(
        f"""
[server]
port = {port}
[store]
url = "sqlite:///{path.parent / 'durable.db'}"
[tokens]
secret = "{SECRET}"
reuse_grace = "60s"
[limits]
login = "1000/minute"
refresh = "100000/minute"
[log]
level = "WARNING"
"""
    )
    return path


class _Client:
    """One browser-like client: it keeps only the last refresh token it received."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.rotations = 0

    async def loop(self, http: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with http.post(f"{base}/auth/refresh-token", json={"refresh_token": self.token}) as r:
                    if r.status != 200:
                        raise AssertionError(f"refresh answered {r.status}: {await r.text()}")
                    self.token = (await r.json())["refresh_token"]
                    self.rotations += 1
            except (aiohttp.ClientError, ConnectionError):
                return  # the gateway died under us: what we hold is our last received token


async def test_kill_9_during_refresh_storm_loses_no_session(tmp_path: Path) -> None:
    port = free_port()
    config = _toml(tmp_path / "gw.toml", port)
    subprocess.run(
        [sys.executable, "-m", "gateway", "users", "add", "durable@example.com", "--password-stdin", "--config", str(config)],
        input=PASSWORD + "\n", text=True, check=True, capture_output=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with gateway_process(config, port) as proc:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def login() -> _Client:
                body = {"email": "durable@example.com", "password": PASSWORD, "refresh_in_body": True}
                async with http.post(f"{base}/auth/login", json=body) as r:
                    assert r.status == 200
                    return _Client((await r.json())["refresh_token"])

            clients: list[_Client] = []
            for _ in range(CLIENTS // 20):
                clients += await asyncio.gather(*[login() for _ in range(20)])
            stop = asyncio.Event()
            loops = [asyncio.create_task(c.loop(http, base, stop)) for c in clients]
            while sum(c.rotations for c in clients) < 2 * CLIENTS:
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            await asyncio.gather(*loops)
    assert sum(c.rotations for c in clients) >= 2 * CLIENTS

    with sqlite3.connect(tmp_path / "durable.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM sessions WHERE revoked_at IS NULL").fetchone()[0] == CLIENTS

    # After a restart every client's last received token (or, when its last request was in flight
    # at the kill, the grace-window twin the gateway answers with) still refreshes.
    with gateway_process(config, port):
        async with aiohttp.ClientSession() as http:
            statuses = []
            for c in clients:
                async with http.post(f"{base}/auth/refresh-token", json={"refresh_token": c.token}) as r:
                    statuses.append(r.status)
            assert statuses == [200] * CLIENTS
    with sqlite3.connect(tmp_path / "durable.db") as db:
        assert db.execute("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL").fetchone()[0] == 0
