"""The SQLite backend (aiosqlite): schema, migrations and transactions; WAL, busy timeout, short writes.

Must not: import aiohttp, tokens or another backend; or let two coroutines interleave statements in
one transaction (every operation holds `_lock`, and writes run under BEGIN IMMEDIATE so that other
processes on the same file queue behind the busy timeout instead of failing).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import Conflict, StoreError, StoreUnavailable
from gateway.store import RevocationEvent, RotateOutcome, SessionRecord, UserRecord

__all__ = ["MIGRATIONS", "SqliteStore"]

# Each entry moves the schema one version up; applied in order at start, never edited once shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        last_used_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        absolute_expires_at REAL NOT NULL,
        remember_me INTEGER NOT NULL,
        user_agent TEXT NOT NULL DEFAULT '',
        ip TEXT NOT NULL DEFAULT '',
        revoked_at REAL,
        revoked_reason TEXT
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        issued_at REAL NOT NULL,
        rotated_at REAL,
        successor_hash TEXT
    );
    CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);
    CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        revoked_at REAL NOT NULL
    );
    CREATE INDEX revocations_time ON revocations(revoked_at);
    """,
)

_SESSION_COLS = (
    "s.id, s.user_id, s.created_at, s.last_used_at, s.expires_at, s.absolute_expires_at, "
    "s.remember_me, s.user_agent, s.ip, s.revoked_at, s.revoked_reason"
)
_USER_COLS = "u.id, u.email, u.email_key, u.password_hash, u.disabled, u.created_at"


def _session(row: Iterable[Any]) -> SessionRecord:
    r = list(row)
    return SessionRecord(
        id=r[0], user_id=r[1], created_at=r[2], last_used_at=r[3], expires_at=r[4], absolute_expires_at=r[5],
        remember_me=bool(r[6]), user_agent=r[7], ip=r[8], revoked_at=r[9], revoked_reason=r[10],
    )  # fmt: skip


def _user(row: Iterable[Any]) -> UserRecord:
    r = list(row)
    return UserRecord(id=r[0], email=r[1], email_key=r[2], password_hash=r[3], disabled=bool(r[4]), created_at=r[5])


class SqliteStore:
    """`Store` on one SQLite file through one aiosqlite connection per process."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Opens (creating if needed) the file, sets WAL and migrates."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN ourselves, so a write transaction starts as IMMEDIATE.
            db = await aiosqlite.connect(str(path), isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
        store = cls(db)
        try:
            await db.execute("PRAGMA busy_timeout = 10000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await store._migrate()
        except sqlite3.Error as exc:
            await db.close()
            raise StoreError(f"cannot prepare SQLite database {path}: {exc}") from exc
        except StoreError:
            # _migrate refuses a newer schema with StoreError; an unclosed aiosqlite connection keeps
            # its non-daemon thread alive and the process would never exit.
            await db.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._tx() as db:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
            version = rows[0][0] if rows else 0
            if not rows:
                await db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > len(MIGRATIONS):
                raise StoreError(f"database schema version {version} is newer than this gateway ({len(MIGRATIONS)})")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await db.execute(statement)
                await db.execute("UPDATE schema_version SET version = ?", (number,))

    @asynccontextmanager
    async def _tx(self, *, write: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction, alone on this connection; sqlite errors become StoreError."""
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                try:
                    await self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            try:
                await self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite: {exc}") from exc

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async with self._lock:
            try:
                return list(await self._db.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite: {exc}") from exc

    async def create_user(self, *, user_id: str, email: str, email_key: str, password_hash: str, now: float) -> UserRecord:
        try:
            async with self._tx() as db:
                await db.execute(
                    "INSERT INTO users (id, email, email_key, password_hash, disabled, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (user_id, email, email_key, password_hash, now, now),
                )
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"a user with email {email} already exists") from exc
        return UserRecord(id=user_id, email=email, email_key=email_key, password_hash=password_hash, disabled=False, created_at=now)

    async def get_user(self, *, email_key: str | None = None, user_id: str | None = None) -> UserRecord | None:
        if email_key is not None:
            rows = await self._read(f"SELECT {_USER_COLS} FROM users u WHERE u.email_key = ?", (email_key,))
        else:
            rows = await self._read(f"SELECT {_USER_COLS} FROM users u WHERE u.id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    async def list_users(self) -> list[UserRecord]:
        rows = await self._read(f"SELECT {_USER_COLS} FROM users u ORDER BY u.created_at, u.email_key")
        return [_user(r) for r in rows]

    async def update_user(
        self, user_id: str, *, now: float, password_hash: str | None = None, disabled: bool | None = None
    ) -> list[str]:
        async with self._tx() as db:
            if password_hash is not None:
                await db.execute("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?", (password_hash, now, user_id))
            if disabled is not None:
                await db.execute("UPDATE users SET disabled = ?, updated_at = ? WHERE id = ?", (int(disabled), now, user_id))
            if password_hash is None and not disabled:
                return []
            reason = "password_changed" if password_hash is not None else "user_disabled"
            return await self._revoke_where(db, "user_id = ?", (user_id,), now=now, reason=reason)

    async def create_session(self, session: SessionRecord, *, token_hash: str) -> None:
        s = session
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, absolute_expires_at,"
                " remember_me, user_agent, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (s.id, s.user_id, s.created_at, s.last_used_at, s.expires_at, s.absolute_expires_at,
                 int(s.remember_me), s.user_agent, s.ip),
            )  # fmt: skip
            await db.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?, ?, ?)",
                (token_hash, s.id, s.created_at),
            )

    async def rotate(
        self,
        *,
        token_hash: str,
        successor_hash: str,
        now: float,
        grace_s: float,
        remember_ttl_s: float,
        session_ttl_s: float,
    ) -> RotateOutcome:
        async with self._tx() as db:
            rows = list(
                await db.execute_fetchall(
                    f"SELECT t.rotated_at, t.successor_hash, {_SESSION_COLS}, {_USER_COLS},"
                    " (SELECT c.rotated_at IS NULL FROM refresh_tokens c WHERE c.token_hash = t.successor_hash)"
                    " FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id"
                    " WHERE t.token_hash = ?",
                    (token_hash,),
                )
            )
            if not rows:
                return RotateOutcome(kind="invalid", reason="unknown")
            row = rows[0]
            rotated_at, stored_successor = row[0], row[1]
            session, user, child_is_current = _session(row[2:13]), _user(row[13:19]), bool(row[19])
            if session.revoked_at is not None:
                return RotateOutcome(kind="invalid", session=session, user=user, reason="revoked")
            if user.disabled:
                return RotateOutcome(kind="invalid", session=session, user=user, reason="user_disabled")
            if now >= session.expires_at or now >= session.absolute_expires_at:
                return RotateOutcome(kind="invalid", session=session, user=user, reason="expired")
            if rotated_at is not None:
                if stored_successor == successor_hash and child_is_current and now - rotated_at <= grace_s:
                    return RotateOutcome(kind="twin", session=session, user=user, reason="within_grace")
                await self._revoke_where(db, "id = ?", (session.id,), now=now, reason="refresh_token_reused")
                return RotateOutcome(kind="reused", session=session, user=user, reason="refresh_token_reused")
            ttl = remember_ttl_s if session.remember_me else session_ttl_s
            expires_at = min(now + ttl, session.absolute_expires_at)
            await db.execute(
                "UPDATE refresh_tokens SET rotated_at = ?, successor_hash = ? WHERE token_hash = ? AND rotated_at IS NULL",
                (now, successor_hash, token_hash),
            )
            await db.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?, ?, ?)",
                (successor_hash, session.id, now),
            )
            await db.execute(
                "UPDATE sessions SET last_used_at = ?, expires_at = ? WHERE id = ?", (now, expires_at, session.id)
            )
        return RotateOutcome(kind="rotated", session=replace(session, last_used_at=now, expires_at=expires_at), user=user)

    async def find_session(self, *, token_hash: str | None = None, session_id: str | None = None) -> SessionRecord | None:
        if token_hash is not None:
            rows = await self._read(
                f"SELECT {_SESSION_COLS} FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.token_hash = ?",
                (token_hash,),
            )
        else:
            rows = await self._read(f"SELECT {_SESSION_COLS} FROM sessions s WHERE s.id = ?", (session_id,))
        return _session(rows[0]) if rows else None

    async def list_sessions(self, user_id: str, *, now: float) -> list[SessionRecord]:
        rows = await self._read(
            f"SELECT {_SESSION_COLS} FROM sessions s WHERE s.user_id = ? AND s.revoked_at IS NULL"
            " AND s.expires_at > ? AND s.absolute_expires_at > ? ORDER BY s.created_at DESC",
            (user_id, now, now),
        )
        return [_session(r) for r in rows]

    async def revoke(
        self, *, now: float, reason: str, session_id: str | None = None, user_id: str | None = None
    ) -> list[str]:
        async with self._tx() as db:
            if session_id is not None:
                return await self._revoke_where(db, "id = ?", (session_id,), now=now, reason=reason)
            return await self._revoke_where(db, "user_id = ?", (user_id,), now=now, reason=reason)

    @staticmethod
    async def _revoke_where(
        db: aiosqlite.Connection, where: str, params: tuple[Any, ...], *, now: float, reason: str
    ) -> list[str]:
        rows = await db.execute_fetchall(f"SELECT id FROM sessions WHERE {where} AND revoked_at IS NULL", params)
        ids = [r[0] for r in rows]
        if ids:
            await db.execute(
                f"UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE {where} AND revoked_at IS NULL",
                (now, reason, *params),
            )
            await db.executemany("INSERT INTO revocations (session_id, revoked_at) VALUES (?, ?)", [(i, now) for i in ids])
        return ids

    async def count_live_sessions(self, *, now: float) -> int:
        rows = await self._read(
            "SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > ? AND absolute_expires_at > ?",
            (now, now),
        )
        return int(rows[0][0])

    async def revocations_since(self, seq: int, *, not_before: float = 0.0) -> list[RevocationEvent]:
        rows = await self._read(
            "SELECT seq, session_id, revoked_at FROM revocations WHERE seq > ? AND revoked_at >= ? ORDER BY seq",
            (seq, not_before),
        )
        return [RevocationEvent(seq=r[0], session_id=r[1], revoked_at=r[2]) for r in rows]

    async def prune(self, *, now: float, revocations_before: float) -> int:
        async with self._tx() as db:
            cursor = await db.execute("DELETE FROM sessions WHERE absolute_expires_at < ?", (now,))
            count = cursor.rowcount
            await db.execute("DELETE FROM revocations WHERE revoked_at < ?", (revocations_before,))
        return count

    async def ping(self) -> None:
        await self._read("SELECT 1")

    async def aclose(self) -> None:
        await self._db.close()
