"""The store contract on a real SQLite file, plus what only the SQLite backend promises (WAL, migrations)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import StoreConfig
from gateway.core.errors import Conflict, StoreError, StoreUnavailable
from gateway.store import SessionRecord, Store, open_store
from gateway.store.sqlite import MIGRATIONS
from tests.store_contract import StoreContract

T0 = 1_700_000_000.0


def _cfg(path: Path) -> StoreConfig:
    return StoreConfig(url=f"sqlite:///{path}", sqlite_path=path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "gateway.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(_cfg(db_path))
    try:
        yield opened
    finally:
        await opened.aclose()


class TestSqliteStore(StoreContract):
    """Every contract test on SQLite (the `store` fixture above)."""


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql))


async def test_sqlite_open_sets_wal_mode(store: Store, db_path: Path) -> None:
    assert _query(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_open_schema_version_at_latest(store: Store, db_path: Path) -> None:
    assert _query(db_path, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]


async def test_sqlite_reopen_keeps_data(db_path: Path) -> None:
    first = await open_store(_cfg(db_path))
    user = await first.create_user(user_id="u-1", email="a@example.com", email_key="a@example.com", password_hash="h", now=T0)
    record = SessionRecord(
        id=str(uuid.uuid4()), user_id=user.id, created_at=T0, last_used_at=T0, expires_at=T0 + 100,
        absolute_expires_at=T0 + 1000, remember_me=True, user_agent="ua", ip="192.0.2.1",
    )  # fmt: skip
    await first.create_session(record, token_hash="hash-1")
    await first.aclose()
    second = await open_store(_cfg(db_path))
    try:
        assert await second.get_user(user_id="u-1") == user
        assert await second.find_session(token_hash="hash-1") == record
    finally:
        await second.aclose()


async def test_sqlite_migrations_reapplied_are_idempotent(db_path: Path) -> None:
    for _ in range(3):
        opened = await open_store(_cfg(db_path))
        await opened.aclose()
    assert _query(db_path, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    tables = {r[0] for r in _query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "sessions", "refresh_tokens", "revocations", "schema_version"} <= tables


async def test_sqlite_newer_schema_version_refused(db_path: Path) -> None:
    opened = await open_store(_cfg(db_path))
    await opened.aclose()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    with pytest.raises(StoreError):
        await open_store(_cfg(db_path))


async def test_sqlite_two_connections_one_file_see_each_others_revocations(db_path: Path) -> None:
    a = await open_store(_cfg(db_path))
    b = await open_store(_cfg(db_path))
    try:
        user = await a.create_user(user_id="u-1", email="a@example.com", email_key="a@example.com", password_hash="h", now=T0)
        record = SessionRecord(
            id="s-1", user_id=user.id, created_at=T0, last_used_at=T0, expires_at=T0 + 100,
            absolute_expires_at=T0 + 1000, remember_me=False, user_agent="", ip="",
        )  # fmt: skip
        await a.create_session(record, token_hash="hash-1")
        assert await b.revoke(now=T0 + 1, reason="admin", session_id="s-1") == ["s-1"]
        assert [e.session_id for e in await a.revocations_since(0)] == ["s-1"]
    finally:
        await a.aclose()
        await b.aclose()


def _record(session_id: str, user_id: str) -> SessionRecord:
    return SessionRecord(
        id=session_id, user_id=user_id, created_at=T0, last_used_at=T0, expires_at=T0 + 100,
        absolute_expires_at=T0 + 1000, remember_me=False, user_agent="", ip="",
    )  # fmt: skip


async def test_sqlite_queued_writes_one_failing_rolls_back_only_itself(store: Store, db_path: Path) -> None:
    user = await store.create_user(user_id="u-1", email="a@example.com", email_key="a@example.com", password_hash="h", now=T0)
    await store.create_session(_record("s-0", user.id), token_hash="hash-0")
    # Another connection holds the write lock, so the operations below queue up and share a transaction.
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        tasks = [
            asyncio.ensure_future(store.create_session(_record("s-1", user.id), token_hash="hash-1")),
            # its session row goes in, then its token hash collides: the whole operation must vanish
            asyncio.ensure_future(store.create_session(_record("s-dup", user.id), token_hash="hash-0")),
            asyncio.ensure_future(
                store.rotate(
                    token_hash="hash-0", successor_hash="hash-0b", now=T0 + 1, grace_s=10, remember_ttl_s=1000, session_ttl_s=100
                )
            ),
            asyncio.ensure_future(
                store.create_user(user_id="u-2", email="A@example.com", email_key="a@example.com", password_hash="h", now=T0)
            ),
            asyncio.ensure_future(store.create_session(_record("s-2", user.id), token_hash="hash-2")),
        ]
        await asyncio.sleep(0.3)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is None and results[4] is None
    assert isinstance(results[1], StoreUnavailable)
    assert results[2].kind == "rotated"  # type: ignore[union-attr]
    assert isinstance(results[3], Conflict)
    assert await store.find_session(session_id="s-dup") is None
    assert {s.id for s in await store.list_sessions(user.id, now=T0 + 2)} == {"s-0", "s-1", "s-2"}
    assert await store.get_user(user_id="u-2") is None
    assert (await store.find_session(token_hash="hash-0b")).id == "s-0"  # type: ignore[union-attr]


async def test_sqlite_aclose_first_runs_what_was_queued(db_path: Path) -> None:
    store = await open_store(_cfg(db_path))
    pending = asyncio.ensure_future(
        store.create_user(user_id="u-1", email="a@example.com", email_key="a@example.com", password_hash="h", now=T0)
    )
    await asyncio.sleep(0)
    await store.aclose()
    assert (await pending).id == "u-1"
    with pytest.raises(StoreUnavailable):
        await store.ping()
    reopened = await open_store(_cfg(db_path))
    try:
        assert await reopened.get_user(user_id="u-1") is not None
    finally:
        await reopened.aclose()


def test_sqlite_store_left_open_does_not_keep_the_process_alive(db_path: Path) -> None:
    code = (
        "import asyncio, pathlib\n"
        "from gateway.config import StoreConfig\n"
        "from gateway.store import open_store\n"
        f"p = pathlib.Path({str(db_path)!r})\n"
        "async def main():\n"
        "    store = await open_store(StoreConfig(url=f'sqlite:///{p}', sqlite_path=p))\n"
        "    await store.ping()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
