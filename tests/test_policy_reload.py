"""A running gateway process re-reads its route policies on SIGHUP; a broken policy is refused and the old one kept."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import SECRET, free_port, gateway_process, mint, wait_http


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "upstream_demo", "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/public/hello", timeout=15, proc=None)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _toml(port: int, upstream_port: int, tmp: Path, allow: str) -> str:
    return (
        f'[server]\nport = {port}\n[store]\nurl = "sqlite:///{tmp / "g.db"}"\n[tokens]\nsecret = "{SECRET}"\nleeway = "30s"\n'
        f'[log]\nlevel = "WARNING"\n[[routes]]\nprefix = "/api"\nupstream = "http://127.0.0.1:{upstream_port}"\n{allow}\n'
    )


async def _status(http: aiohttp.ClientSession, base: str, roles: list[str]) -> int:
    async with http.get(f"{base}/api/whoami", headers={"Authorization": f"Bearer {mint(roles=roles)}"}) as r:
        return r.status


async def test_policy_sighup_reloads_rules_and_keeps_old_on_error(tmp_path: Path, upstream_port: int) -> None:
    port = free_port()
    cfg = tmp_path / "g.toml"
    cfg.write_text(_toml(port, upstream_port, tmp_path, 'allow = [{ roles = ["admin"] }]'))
    base = f"http://127.0.0.1:{port}"
    with gateway_process(cfg, port) as proc:
        async with aiohttp.ClientSession() as http:
            assert await _status(http, base, ["viewer"]) == 403
            cfg.write_text(_toml(port, upstream_port, tmp_path, 'allow = [{ roles = ["admin", "viewer"] }]'))
            proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                if await _status(http, base, ["viewer"]) == 200:
                    break
                await asyncio.sleep(0.1)
            assert await _status(http, base, ["viewer"]) == 200
            cfg.write_text(_toml(port, upstream_port, tmp_path, "allow = [{ nope = 1 }]"))
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert await _status(http, base, ["viewer"]) == 200
            assert await _status(http, base, ["other"]) == 403
        assert proc.poll() is None
