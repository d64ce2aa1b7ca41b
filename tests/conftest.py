"""Fixtures: a real demo upstream on a real port, a config under tmp_path, real gateways on real ports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import Config
from tests.support import FakeClock, build_config
from upstream_demo import create_app as create_upstream

MakeConfig = Callable[..., Config]
MakeGateway = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def upstream(aiohttp_server: Any) -> TestServer:
    """The bundled demo upstream, a separate aiohttp server on its own port."""
    server: TestServer = await aiohttp_server(create_upstream())
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
def make_gateway(aiohttp_client: Any, clock: FakeClock) -> MakeGateway:
    """Starts a gateway for a config on a real port; returns a client whose cookie jar accepts Secure cookies."""

    async def make(cfg: Config, **kwargs: Any) -> TestClient[Any, Any]:
        from aiohttp import CookieJar

        app = create_app(cfg, clock=kwargs.pop("clock", clock))
        client: TestClient[Any, Any] = await aiohttp_client(app, cookie_jar=CookieJar(unsafe=True, treat_as_secure_origin=["http://127.0.0.1"]), **kwargs)
        return client

    return make


@pytest.fixture
async def gateway(make_gateway: MakeGateway, make_config: MakeConfig) -> TestClient[Any, Any]:
    """A gateway with the default test config (routes /api required, /public public, /opt optional)."""
    return await make_gateway(make_config())
