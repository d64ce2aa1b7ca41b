"""Fixtures: a real demo upstream on a real port, a config under tmp_path, real gateways on real ports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import Config
from tests.support import FakeClock, build_config, missing_service
from upstream_demo import create_app as create_upstream

MakeConfig = Callable[..., Config]
MakeGateway = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def upstream(aiohttp_server: Any) -> TestServer:
    """The bundled demo upstream, a separate aiohttp server on its own port."""
    # Echoing unknown paths: the proxy tests probe what arrives for arbitrary (and odd) paths.
    server: TestServer = await aiohttp_server(create_upstream(echo_unknown_paths=True))
    return server


@pytest.fixture
def upstream_url(upstream: TestServer) -> str:
    return f"http://127.0.0.1:{upstream.port}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_config(tmp_path: Path, upstream_url: str) -> MakeConfig:
    """make_config(tokens={...}, routes=[...], ...) -> Config; tables merge over the defaults."""

    def make(**tables: Any) -> Config:
        return build_config(tmp_path, upstream_url, **tables)

    return make


@pytest.fixture
def make_gateway(aiohttp_client: Any, aiohttp_server: Any, clock: FakeClock) -> MakeGateway:
    """Starts a gateway for a config on a real port; returns a client whose cookie jar sends Secure cookies to it."""

    async def make(cfg: Config, **kwargs: Any) -> TestClient[Any, Any]:
        from aiohttp import CookieJar

        app = create_app(cfg, clock=kwargs.pop("clock", clock))
        server = await aiohttp_server(app)
        # The jar compares origins with their port, so the secure origin is known only once the server listens.
        jar = CookieJar(unsafe=True, treat_as_secure_origin=[f"http://127.0.0.1:{server.port}"])
        client: TestClient[Any, Any] = await aiohttp_client(server, cookie_jar=jar, **kwargs)
        return client

    return make


@pytest.fixture
async def gateway(make_gateway: MakeGateway, make_config: MakeConfig) -> TestClient[Any, Any]:
    """A gateway with the default test config (routes /api required, /public public, /opt optional)."""
    return await make_gateway(make_config())


PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def pg_database() -> Any:
    """A throw-away PostgreSQL database for this test run (dropped at the end), or a failure when no server answers.

    A missing server fails the run unless GATEWAY_ALLOW_MISSING names postgres.
    """
    import asyncio
    import uuid

    import asyncpg  # in the test extra: its absence is an install error, not a missing service
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        missing_service("postgres", f"no PostgreSQL server answers at 127.0.0.1:5432 ({exc})")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_url(pg_database: str) -> str:
    """The run's PostgreSQL database, emptied before each test."""
    import asyncpg

    conn = await asyncpg.connect(pg_database)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_version'")
        if tables:
            await conn.execute("TRUNCATE " + ", ".join(f'"{t[0]}"' for t in tables) + " RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    return pg_database


# Federated login: `make_fed` / `fed` start a real OpenID provider and a gateway registered with it.
from tests.oidc_provider import fed, make_fed  # noqa: E402,F401
