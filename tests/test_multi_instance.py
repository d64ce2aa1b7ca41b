"""Several gateway processes on one store behave as one: rotation, reuse detection and revocation."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import SECRET, free_port, gateway_process, wait_http

PASSWORD = "correct horse battery"


def _toml(*, port: int, store_url: str, upstream_port: int, workers: int = 1) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
workers = {workers}

[store]
url = "{store_url}"

[tokens]
secret = "{SECRET}"
access_ttl = "5m"
reuse_grace = "1s"
leeway = "0s"

[cookies]
secure = true

[limits]
login = "1000/minute"
refresh = "1000/minute"

[log]
level = "WARNING"

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:{upstream_port}"
"""


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    """The demo upstream as its own process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "upstream_demo", "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/public/hello", timeout=15, proc=None)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def _instances(tmp_path: Path, store_url: str, upstream_port: int, *, count: int, workers: int = 1) -> Iterator[list[str]]:
    with ExitStack() as stack:
        urls = []
        for i in range(count):
            port = free_port()
            cfg = tmp_path / f"gateway-{i}.toml"
            cfg.write_text(_toml(port=port, store_url=store_url, upstream_port=upstream_port, workers=workers))
            stack.enter_context(gateway_process(cfg, port))
            urls.append(f"http://127.0.0.1:{port}")
        yield urls


def _add_user(config: Path, email: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "gateway", "users", "add", email, "--password-stdin", "--config", str(config)],
        input=PASSWORD + "\n", text=True, check=True, capture_output=True,
    )  # fmt: skip


async def _login(http: aiohttp.ClientSession, base: str, email: str) -> dict[str, Any]:
    async with http.post(f"{base}/auth/login", json={"email": email, "password": PASSWORD, "refresh_in_body": True}) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def _refresh(http: aiohttp.ClientSession, base: str, token: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/auth/refresh-token", json={"refresh_token": token}) as r:
        return r.status, await r.json()


async def _whoami(http: aiohttp.ClientSession, base: str, access: str) -> int:
    async with http.get(f"{base}/api/whoami", headers={"Authorization": f"Bearer {access}"}) as r:
        return r.status


async def _refused_within(http: aiohttp.ClientSession, base: str, access: str, seconds: float) -> None:
    """Polls `base` until it refuses `access`; fails the test if it still accepts it after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if await _whoami(http, base, access) == 401:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{base} still accepted the token after {seconds}s")


async def _rotate_replay_logout(a: str, b: str) -> None:
    async with aiohttp.ClientSession() as http:
        first = await _login(http, a, "multi@example.com")
        other = await _login(http, a, "multi@example.com")
        status, second = await _refresh(http, b, first["refresh_token"])
        assert status == 200
        assert await _whoami(http, a, second["access_token"]) == 200
        await asyncio.sleep(1.2)  # past reuse_grace = 1s: the replay is theft, not a race
        status, body = await _refresh(http, a, first["refresh_token"])
        assert (status, body["error"]) == (403, "refresh_token_reused")
        status, body = await _refresh(http, b, second["refresh_token"])
        assert (status, body["error"]) == (403, "invalid_refresh_token")
        await _refused_within(http, a, second["access_token"], 1.0)
        await _refused_within(http, b, second["access_token"], 1.0)
        # The user's other login lives on; a logout on B then reaches A within a second.
        assert await _whoami(http, a, other["access_token"]) == 200
        async with http.post(f"{b}/auth/logout", json={"refresh_token": other["refresh_token"]}) as r:
            assert r.status == 204
        await _refused_within(http, a, other["access_token"], 1.0)


async def _concurrent_refreshes(base: str, n: int) -> set[str]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
        login = await _login(http, base, "multi@example.com")
        results = await asyncio.gather(*[_refresh(http, base, login["refresh_token"]) for _ in range(n)])
        assert [s for s, _ in results] == [200] * n
        successors = {body["refresh_token"] for _, body in results}
        (successor,) = successors
        status, _ = await _refresh(http, base, successor)
        assert status == 200
        return successors


def _pg_rotations(url: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM refresh_tokens WHERE rotated_at IS NOT NULL"))
        finally:
            await conn.close()

    return asyncio.run(count())


async def test_multi_instance_postgres_rotate_replay_logout_across_instances(tmp_path: Path, pg_url: str, upstream_port: int) -> None:
    with _instances(tmp_path, pg_url, upstream_port, count=2) as (a, b):
        _add_user(tmp_path / "gateway-0.toml", "multi@example.com")
        await _rotate_replay_logout(a, b)


async def test_multi_instance_postgres_four_workers_100_refreshes_one_rotation(tmp_path: Path, pg_url: str, upstream_port: int) -> None:
    with _instances(tmp_path, pg_url, upstream_port, count=1, workers=4) as (a,):
        _add_user(tmp_path / "gateway-0.toml", "multi@example.com")
        await _concurrent_refreshes(a, 100)
    # One rotation by the 100 presentations, one by the follow-up refresh of the successor.
    assert await asyncio.to_thread(_pg_rotations, pg_url) == 2


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _server_side_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the accepted socket of the TCP connection 127.0.0.1:client_port -> server_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, remote_port = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if (local_port, remote_port) == (server_port, client_port):
                return int(fields[9])
    return None


def _serving_worker(workers: set[int], server_port: int, client_port: int) -> int:
    """Which worker process holds the server end of this client's connection."""
    inode = _server_side_inode(server_port, client_port)
    owners = [pid for pid in workers if inode is not None and inode in _socket_inodes(pid)]
    assert len(owners) == 1, (inode, owners)
    return owners[0]


class _Pinned:
    """One kept-alive connection, so every request of this client reaches the same worker (checked per request)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.client_port = 0

    def _send(self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        self.conn.request(method, path, body=data, headers=headers)
        port = self.conn.sock.getsockname()[1]
        assert self.client_port in (0, port), "the connection was replaced: another worker may have answered"
        self.client_port = port
        resp = self.conn.getresponse()
        raw = resp.read()
        is_json = resp.getheader("Content-Type", "").startswith("application/json")
        return resp.status, json.loads(raw) if is_json else None

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        return await asyncio.to_thread(self._send, method, path, body, headers or {})

    def close(self) -> None:
        self.conn.close()


async def _one_client_per_worker(port: int, workers: set[int]) -> dict[int, _Pinned]:
    """Opens connections (the kernel spreads them over the workers) until each worker holds one."""
    pinned: dict[int, _Pinned] = {}
    for _ in range(64):
        client = _Pinned(port)
        try:
            assert (await client.request("GET", "/healthz"))[0] == 200
            worker = _serving_worker(workers, port, client.client_port)
        except BaseException:
            client.close()
            raise
        if worker in pinned:
            client.close()
        else:
            pinned[worker] = client
        if len(pinned) == len(workers):
            return pinned
    for client in pinned.values():
        client.close()
    raise AssertionError(f"64 connections reached only workers {sorted(pinned)} of {sorted(workers)}")


async def _workers_of(supervisor: subprocess.Popen[bytes], count: int) -> set[int]:
    deadline = time.monotonic() + 10
    while len(workers := _children(supervisor.pid)) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(workers) == count
    return workers


async def test_multi_instance_sqlite_two_workers_rotate_replay_logout(tmp_path: Path, upstream_port: int) -> None:
    port = free_port()
    cfg = tmp_path / "gw.toml"
    store_url = f"sqlite:///{tmp_path / 'shared.db'}"
    cfg.write_text(_toml(port=port, store_url=store_url, upstream_port=upstream_port, workers=2))
    _add_user(cfg, "multi@example.com")
    with gateway_process(cfg, port) as supervisor:
        workers = await _workers_of(supervisor, 2)
        pinned = await _one_client_per_worker(port, workers)
        a, b = pinned.values()  # a and b are served by different worker processes
        try:
            login = {"email": "multi@example.com", "password": PASSWORD, "refresh_in_body": True}

            def refresh(tokens: dict[str, Any]) -> dict[str, Any]:
                return {"refresh_token": tokens["refresh_token"]}

            (status, first), (status2, other) = [await a.request("POST", "/auth/login", body=login) for _ in range(2)]
            assert status == status2 == 200
            status, second = await b.request("POST", "/auth/refresh-token", body=refresh(first))
            assert status == 200

            async def whoami(client: _Pinned, access: str) -> int:
                return (await client.request("GET", "/api/whoami", headers={"Authorization": f"Bearer {access}"}))[0]

            async def refused_within(client: _Pinned, access: str, seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while await whoami(client, access) != 401:
                    assert time.monotonic() < deadline, f"still accepted after {seconds}s"
                    await asyncio.sleep(0.05)

            assert await whoami(a, second["access_token"]) == 200
            await asyncio.sleep(1.2)  # past reuse_grace = 1s: the replay is theft, not a race
            # Theft detected by worker A revokes the session on worker B within a second, and the
            # successor's refresh token is dead there too.
            status, body = await a.request("POST", "/auth/refresh-token", body=refresh(first))
            assert (status, body["error"]) == (403, "refresh_token_reused")
            await refused_within(b, second["access_token"], 1.0)
            status, body = await b.request("POST", "/auth/refresh-token", body=refresh(second))
            assert (status, body["error"]) == (403, "invalid_refresh_token")
            # The user's other login lives on; a logout on worker B reaches worker A within a second.
            assert await whoami(a, other["access_token"]) == 200
            assert await whoami(b, other["access_token"]) == 200
            status, _ = await b.request("POST", "/auth/logout", body=refresh(other))
            assert status == 204
            await refused_within(a, other["access_token"], 1.0)
            # Every request above went over its pinned connection: both workers served.
            assert {_serving_worker(workers, port, c.client_port) for c in (a, b)} == workers
        finally:
            for client in pinned.values():
                client.close()


async def test_multi_instance_sqlite_two_workers_100_refreshes_one_rotation(tmp_path: Path, upstream_port: int) -> None:
    db = tmp_path / "shared.db"
    with _instances(tmp_path, f"sqlite:///{db}", upstream_port, count=1, workers=2) as (a,):
        _add_user(tmp_path / "gateway-0.toml", "multi@example.com")
        await _concurrent_refreshes(a, 100)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM refresh_tokens WHERE rotated_at IS NOT NULL").fetchone()[0] == 2
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_multi_instance_sqlite_two_processes_on_one_file(tmp_path: Path, upstream_port: int) -> None:
    db = tmp_path / "shared.db"
    with _instances(tmp_path, f"sqlite:///{db}", upstream_port, count=2) as (a, b):
        _add_user(tmp_path / "gateway-0.toml", "multi@example.com")
        await _rotate_replay_logout(a, b)


async def test_restarted_gateway_on_the_same_sqlite_file_refuses_a_token_logged_out_before(
    tmp_path: Path, upstream_port: int
) -> None:
    db = tmp_path / "restart.db"
    async with aiohttp.ClientSession() as http:
        with _instances(tmp_path, f"sqlite:///{db}", upstream_port, count=1) as (a,):
            _add_user(tmp_path / "gateway-0.toml", "multi@example.com")
            gone = await _login(http, a, "multi@example.com")
            kept = await _login(http, a, "multi@example.com")
            async with http.post(f"{a}/auth/logout", headers={"Authorization": f"Bearer {gone['access_token']}"}) as r:
                assert r.status == 204
            assert await _whoami(http, a, gone["access_token"]) == 401
        # The first process is gone (SIGTERM, waited for); a new one starts on the same file.
        with _instances(tmp_path, f"sqlite:///{db}", upstream_port, count=1) as (b,):
            # The first request after start-up: the revocation must be known before the first poll.
            async with http.get(f"{b}/api/whoami", headers={"Authorization": f"Bearer {gone['access_token']}"}) as r:
                assert r.status == 401
                assert "revoked" in (await r.json())["error_description"]
            assert await _whoami(http, b, kept["access_token"]) == 200


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


async def test_workers_supervisor_restarts_a_dead_worker_and_stops_all_on_sigterm(tmp_path: Path, upstream_port: int) -> None:
    import os
    import signal

    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_toml(port=port, store_url=f"sqlite:///{tmp_path / 'w.db'}", upstream_port=upstream_port, workers=2))
    with gateway_process(cfg, port) as supervisor:
        deadline = time.monotonic() + 10
        while len(workers := _children(supervisor.pid)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(workers) == 2
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = _children(supervisor.pid)
            if len(now) == 2 and victim not in now:
                break
            await asyncio.sleep(0.1)
        replaced = _children(supervisor.pid)
        assert len(replaced) == 2 and victim not in replaced
        async with aiohttp.ClientSession() as http:
            for _ in range(10):
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                    async with fresh.get(f"http://127.0.0.1:{port}/healthz") as r:
                        assert r.status == 200
            # /metrics on any worker sums every worker's counters.
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            from prometheus_client.parser import text_string_to_metric_families

            served = sum(
                s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "gateway_requests_total" and s.labels.get("route") == "internal"
            )  # fmt: skip
            assert served >= 10
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, 20) == 0
        for pid in replaced:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
