"""Slow and numerous clients cannot pin a real gateway process: header deadline and connection cap."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from tests.support import SECRET, free_port, gateway_process


def _config(tmp_path: Path, port: int, **server: object) -> Path:
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in server.items())
    path = tmp_path / "gw.toml"
    path.write_text(f'[server]\nport = {port}\n{extra}\n[store]\nurl = "sqlite:///{tmp_path / "g.db"}"\n[tokens]\nsecret = "{SECRET}"\n')
    return path


async def _status_line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), timeout=10)


async def test_slowloris_headers_get_408_json_and_others_are_served(tmp_path: Path) -> None:
    port = free_port()
    with gateway_process(_config(tmp_path, port, header_timeout="1s"), port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        await writer.drain()
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200  # the gateway answers others meanwhile
        line = await _status_line(reader)
        rest = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
    assert line.startswith(b"HTTP/1.1 408")
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"
    assert time.monotonic() - started < 5


async def test_idle_connection_that_never_sends_is_closed(tmp_path: Path) -> None:
    port = free_port()
    with gateway_process(_config(tmp_path, port, header_timeout="1s"), port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        line = await _status_line(reader)
        writer.close()
    assert line.startswith(b"HTTP/1.1 408")


async def test_connection_cap_answers_503_json_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    with gateway_process(_config(tmp_path, port, max_connections=3, header_timeout="30s"), port):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "too_many_connections"
        for _, w in held:
            w.close()
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200


async def test_keepalive_connection_keeps_working_across_requests(tmp_path: Path) -> None:
    port = free_port()
    with gateway_process(_config(tmp_path, port, header_timeout="1s"), port):
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 200
                await asyncio.sleep(1.5)  # idle longer than header_timeout between requests is fine


async def test_parser_rejections_are_json(tmp_path: Path) -> None:
    port = free_port()
    with gateway_process(_config(tmp_path, port), port):
        for raw in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
            b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=10)
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") and head[9:10] == b"4", head
            assert b"application/json" in head
            assert json.loads(body)["error"] in ("invalid_request", "payload_too_large")
