"""`server.buffer_request_body`: small chunked request bodies reach the upstream with Content-Length
(many WSGI servers cannot read chunked input), larger ones still stream, in bounded memory."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import parse_size
from gateway.core.errors import ConfigError
from tests.conftest import MakeConfig, MakeGateway
from tests.support import build_config

Client = TestClient[Any, Any]


def chunks(piece: bytes, count: int) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    return gen()


async def echo(client: Client, data: Any) -> dict[str, Any]:
    resp = await client.post("/public/echo", data=data)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def test_small_chunked_body_is_sent_with_content_length(gateway: Client) -> None:
    piece = b"0123456789abcdef" * 1024  # 16 KiB, 64 pieces = 1 MiB exactly: the default limit
    seen = await echo(gateway, chunks(piece, 64))
    assert seen["headers"].get("Content-Length") == str(len(piece) * 64)
    assert "Transfer-Encoding" not in seen["headers"]
    assert seen["body_sha256"] == hashlib.sha256(piece * 64).hexdigest()


async def test_chunked_body_over_the_limit_still_streams_chunked(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config(server={"host": "127.0.0.1", "port": 0, "buffer_request_body": "64KiB"}))
    piece = b"x" * 16384
    seen = await echo(client, chunks(piece, 5))  # 80 KiB
    assert seen["headers"].get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in seen["headers"]
    assert seen["body_length"] == 5 * 16384
    assert seen["body_sha256"] == hashlib.sha256(piece * 5).hexdigest()


async def test_buffering_can_be_turned_off(make_gateway: MakeGateway, make_config: MakeConfig) -> None:
    client = await make_gateway(make_config(server={"host": "127.0.0.1", "port": 0, "buffer_request_body": 0}))
    seen = await echo(client, chunks(b"hello", 2))
    assert seen["headers"].get("Transfer-Encoding") == "chunked"
    assert seen["body_length"] == 10


async def test_content_length_bodies_are_untouched(gateway: Client) -> None:
    seen = await echo(gateway, b"hello world")
    assert seen["headers"].get("Content-Length") == "11"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1MiB", 1 << 20), ("512KiB", 512 << 10), ("2MB", 2_000_000), ("100B", 100), ("7", 7), (4096, 4096), ("1GiB", 1 << 30)],
)
def test_parse_size_forms(raw: object, expected: int) -> None:
    assert parse_size(raw) == expected


@pytest.mark.parametrize("raw", ["1 potato", "-1", -5, "1.5MiB", True, "MiB", ""])
def test_buffer_request_body_bad_value_names_the_key(tmp_path: Path, raw: object) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(tmp_path, "http://127.0.0.1:1", server={"buffer_request_body": raw})
    message = str(info.value)
    assert "server.buffer_request_body: must be" in message
    assert "1MiB" in message or ">= 0" in message


def test_underscore_headers_bad_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(tmp_path, "http://127.0.0.1:1", server={"underscore_headers": "allow"})
    assert "server.underscore_headers: must be one of drop | pass" in str(info.value)
