"""Bodies stream through the gateway in constant memory: 1 GiB down and 1 GiB up through a real gateway process.

The gateway and the demo upstream run as separate processes so the gateway's RSS (from /proc) measures only
the proxy; the test process is the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import SECRET, free_port, gateway_process, wait_http, write_toml

GIB = 1024**3
CHUNK = 1024 * 1024
RSS_GROWTH_LIMIT = 50 * 1024 * 1024
PATTERN = (b"0123456789abcdef" * 4096)[: 64 * 1024]  # the demo upstream's stream pattern


def _status_kib(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM`-style field of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@contextlib.contextmanager
def upstream_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "upstream_demo", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/public/hello", timeout=20, proc=proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def _download(session: aiohttp.ClientSession, url: str, size: int) -> int:
    async with session.get(f"{url}/api/stream?bytes={size}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        total = 0
        first = True
        async for chunk in resp.content.iter_chunked(CHUNK):
            if first:
                assert chunk[:64] == PATTERN[:64]
                first = False
            total += len(chunk)
        return total


async def _upload(session: aiohttp.ClientSession, url: str, size: int) -> dict[str, object]:
    block = bytes(range(256)) * (CHUNK // 256)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // CHUNK):
            yield block

    async with session.post(f"{url}/api/echo", data=body()) as resp:
        assert resp.status == 200
        result: dict[str, object] = await resp.json()
        return result


def _reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _sample_rss(pid: int, peaks: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peaks.append(_status_kib(pid, "VmRSS"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.1)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(gateway URL, gateway pid) for a gateway process in front of a demo upstream process."""
    up_port, gw_port = free_port(), free_port()
    config = write_toml(
        tmp_path / "gateway.toml",
        f"""
[server]
host = "127.0.0.1"
port = {gw_port}

[store]
url = "sqlite:///gateway.db"

[tokens]
secret = "{SECRET}"

[log]
level = "WARNING"

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:{up_port}"
auth = "public"

[[routes]]
prefix = "/public"
upstream = "http://127.0.0.1:{up_port}"
auth = "public"
""",
    )
    with upstream_process(up_port), gateway_process(config, gw_port) as gw:
        yield f"http://127.0.0.1:{gw_port}", gw.pid


async def test_streaming_one_gib_down_and_up_keeps_gateway_rss_flat(processes: tuple[str, int]) -> None:
    url, pid = processes
    timeout = aiohttp.ClientTimeout(total=300, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        # Warm up: pools, buffers and code paths allocated once are not growth.
        assert await _download(session, url, 32 * CHUNK) == 32 * CHUNK
        assert (await _upload(session, url, 32 * CHUNK))["body_length"] == 32 * CHUNK
        baseline = _status_kib(pid, "VmRSS")
        # VmHWM already holds the startup peak (the password hasher's memory); "5" resets it to the current RSS
        # so it catches transfer peaks between samples. Without the right to reset it, the samples must do.
        hwm_reset = _reset_hwm(pid)

        peaks: list[int] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(pid, peaks, stop))
        try:
            started = time.monotonic()
            assert await _download(session, url, GIB) == GIB
            down_s = time.monotonic() - started
            started = time.monotonic()
            echoed = await _upload(session, url, GIB)
            up_s = time.monotonic() - started
        finally:
            stop.set()
            await sampler

    expected = hashlib.sha256()
    block = bytes(range(256)) * (CHUNK // 256)
    for _ in range(GIB // CHUNK):
        expected.update(block)
    assert echoed["body_length"] == GIB
    assert echoed["body_sha256"] == expected.hexdigest()

    peak = max([*peaks, _status_kib(pid, "VmRSS"), *([_status_kib(pid, "VmHWM")] if hwm_reset else [])])
    growth = peak - baseline
    print(
        f"1 GiB down {down_s:.1f}s, 1 GiB up {up_s:.1f}s, gateway RSS baseline {baseline >> 20} MiB, peak {peak >> 20} MiB"
    )
    assert growth < RSS_GROWTH_LIMIT, f"gateway RSS grew by {growth >> 20} MiB"
