"""Limits live in the store: two gateway instances on one store together allow what one would.

Each test runs two gateway apps (each with its own store connection, as two processes would have)
on one SQLite file, and again on one PostgreSQL database, and alternates requests between them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.http.keys import SESSIONS
from tests.conftest import MakeConfig, MakeGateway

Client = TestClient[Any, Any]

EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def _pair(
    make_gateway: MakeGateway, make_config: MakeConfig, store_url: str, **limits: str
) -> tuple[Client, Client]:
    cfg = make_config(store={"url": store_url}, limits=limits, server={"trusted_proxies": ["127.0.0.1/32"]})
    a = await make_gateway(cfg)
    b = await make_gateway(cfg)
    await a.server.app[SESSIONS].add_user(EMAIL, PASSWORD)
    return a, b


async def _login(client: Client, password: str, *, ip: str = "198.51.100.1", email: str = EMAIL) -> int:
    resp = await client.post(
        "/auth/login",
        json={"email": email, "password": password, "refresh_in_body": True},
        headers={"X-Forwarded-For": ip},
    )
    return resp.status


async def test_limits_shared_login_failures_two_instances_allow_exactly_the_limit(
    make_gateway: MakeGateway, make_config: MakeConfig, store_url: str
) -> None:
    a, b = await _pair(make_gateway, make_config, store_url, login="4/minute")
    statuses = [await _login((a, b)[i % 2], "wrong password!") for i in range(6)]
    assert statuses == [401] * 4 + [429] * 2
    assert await _login(a, PASSWORD) == 429  # checked before the password, on either instance
    assert await _login(b, PASSWORD) == 429


async def test_limits_shared_login_parallel_burst_on_two_instances_counted_once(
    make_gateway: MakeGateway, make_config: MakeConfig, store_url: str
) -> None:
    a, b = await _pair(make_gateway, make_config, store_url, login="5/minute")
    statuses = await asyncio.gather(*(_login((a, b)[i % 2], f"wrong password {i}") for i in range(16)))
    assert sorted(statuses) == [401] * 5 + [429] * 11


async def test_limits_shared_login_per_email_across_instances_and_addresses(
    make_gateway: MakeGateway, make_config: MakeConfig, store_url: str
) -> None:
    a, b = await _pair(make_gateway, make_config, store_url, login="3/minute")
    for i in range(3):
        assert await _login((a, b)[i % 2], "wrong password!", ip=f"203.0.113.{i + 1}") == 401
    assert await _login(b, PASSWORD, ip="203.0.113.50") == 429


async def test_limits_shared_refresh_one_session_two_instances_allow_exactly_the_limit(
    make_gateway: MakeGateway, make_config: MakeConfig, store_url: str
) -> None:
    a, b = await _pair(make_gateway, make_config, store_url, refresh="3/minute")
    resp = await a.post("/auth/login", json={"email": EMAIL, "password": PASSWORD, "refresh_in_body": True})
    token = (await resp.json())["refresh_token"]
    statuses = []
    for i in range(5):
        resp = await (b, a)[i % 2].post("/auth/refresh-token", json={"refresh_token": token})
        statuses.append(resp.status)
        if resp.status == 200:
            token = (await resp.json())["refresh_token"]
        else:
            assert (await resp.json())["error"] == "rate_limited"
            assert int(resp.headers["Retry-After"]) >= 1
    assert statuses == [200] * 3 + [429] * 2
