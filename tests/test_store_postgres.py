"""The store contract on PostgreSQL (a throw-away database on 127.0.0.1:5432), plus PostgreSQL-only checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.config import StoreConfig
from gateway.store import Store, open_store
from gateway.store.postgres import MIGRATIONS
from tests.store_contract import StoreContract


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    opened = await open_store(StoreConfig(url=pg_url))
    try:
        yield opened
    finally:
        await opened.aclose()


class TestPostgresStore(StoreContract):
    """Every contract test on PostgreSQL (the `store` fixture above)."""


async def test_postgres_concurrent_starts_migrate_once(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        # Every table, whichever migrations created them.
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    stores = await asyncio.gather(*[open_store(StoreConfig(url=pg_url)) for _ in range(5)])
    for s in stores:
        await s.aclose()
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT version FROM schema_version") == len(MIGRATIONS)
        assert await conn.fetchval("SELECT count(*) FROM schema_version") == 1
    finally:
        await conn.close()


async def test_postgres_unreachable_server_is_store_unavailable() -> None:
    from gateway.core.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable):
        await open_store(StoreConfig(url="postgresql://postgres@127.0.0.1:1/nothing"))
