"""The PostgreSQL backend (asyncpg) for several gateway processes or machines sharing one store.

Must not: import aiohttp, tokens or another backend; or rotate a token without holding its row lock
(`SELECT ... FOR UPDATE`), which is what makes one presentation win under any concurrency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import asyncpg

from gateway.config import Rate
from gateway.core.errors import Conflict, StoreError, StoreUnavailable
from gateway.store import (
    GCRA_SLACK,
    AccessChange,
    ChallengeRecord,
    ClientRecord,
    PasskeyRecord,
    RevocationEvent,
    RotateOutcome,
    SessionRecord,
    TotpRecord,
    UserRecord,
    gcra_interval,
    gcra_wait,
)
from gateway.store.postgres_accounts import ACCOUNTS_MIGRATION, PostgresAccounts, void_pending

__all__ = ["MIGRATIONS", "PostgresStore"]

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        disabled BOOLEAN NOT NULL DEFAULT FALSE,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        absolute_expires_at DOUBLE PRECISION NOT NULL,
        remember_me BOOLEAN NOT NULL,
        user_agent TEXT NOT NULL DEFAULT '',
        ip TEXT NOT NULL DEFAULT '',
        revoked_at DOUBLE PRECISION,
        revoked_reason TEXT
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        issued_at DOUBLE PRECISION NOT NULL,
        rotated_at DOUBLE PRECISION,
        successor_hash TEXT
    );
    CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);
    CREATE TABLE revocations (
        seq BIGSERIAL PRIMARY KEY,
        session_id TEXT NOT NULL,
        revoked_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX revocations_time ON revocations(revoked_at);
    """,
    # How a session was authenticated (space-separated RFC 8176 amr values) and by which identity provider.
    """
    ALTER TABLE sessions ADD COLUMN amr TEXT NOT NULL DEFAULT 'pwd';
    ALTER TABLE sessions ADD COLUMN idp TEXT NOT NULL DEFAULT '';
    """,
    # Federated login: users linked by (provider, sub), and which provider login started a session.
    """
    CREATE TABLE federated_identities (
        provider TEXT NOT NULL,
        subject TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (provider, subject)
    );
    CREATE INDEX federated_identities_user ON federated_identities(user_id);
    CREATE TABLE federated_sessions (
        session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
        provider TEXT NOT NULL,
        subject TEXT NOT NULL,
        sid TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX federated_sessions_subject ON federated_sessions(provider, subject);
    CREATE INDEX federated_sessions_sid ON federated_sessions(provider, sid);
    """,
    # Authorization: roles on users (space-separated, sorted) with a version that every change bumps,
    # and the ordered log that tells every instance which grants changed.
    """
    ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN roles_version INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE access_changes (
        seq BIGSERIAL PRIMARY KEY,
        subject TEXT NOT NULL,
        version BIGINT NOT NULL,
        changed_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX access_changes_time ON access_changes(changed_at);
    """,
    # Machine clients (client credentials): secrets stored as hashes, scopes space-separated.
    """
    CREATE TABLE clients (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL
    );
    """,
    # issue 12: shared rate limits (GCRA, see gateway.store)
    """
    CREATE TABLE rate_limits (
        key TEXT PRIMARY KEY,
        tat DOUBLE PRECISION NOT NULL,
        allowed BOOLEAN NOT NULL
    );
    """,
    # issue 12: email verification, email tokens, the mail outbox (see postgres_accounts)
    ACCOUNTS_MIGRATION,
    # Second factors (gateway/mfa): TOTP secrets (encrypted), recovery-code hashes, challenges, passkeys.
    """
    CREATE TABLE mfa_totp (
        user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        secret TEXT NOT NULL,
        confirmed BOOLEAN NOT NULL DEFAULT FALSE,
        last_step BIGINT NOT NULL DEFAULT -1,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE mfa_recovery_codes (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        code_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION,
        PRIMARY KEY (user_id, code_hash)
    );
    CREATE TABLE mfa_challenges (
        key_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
        payload TEXT NOT NULL DEFAULT '',
        expires_at DOUBLE PRECISION NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX mfa_challenges_expiry ON mfa_challenges(expires_at);
    CREATE TABLE passkeys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        credential_id TEXT NOT NULL UNIQUE,
        public_key TEXT NOT NULL,
        sign_count BIGINT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        transports TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION
    );
    CREATE INDEX passkeys_user ON passkeys(user_id);
    """,
)

_MIGRATION_LOCK = 0x6761_7465_7761_79  # arbitrary constants shared by every gateway instance
# Sequence numbers are handed out at insert but become visible at commit, so without this lock a
# smaller number could commit after a poller had read a larger one and be skipped for good.
# Holding it to commit makes seq order equal commit order; revocations are rare, so it costs nothing.
_REVOCATION_LOCK = 0x6761_7465_7761_7A
# The same reasoning for the grant-change log (roles changed, clients removed).
_ACCESS_LOCK = 0x6761_7465_7761_7B

_KEEP_MAIL_S = 7 * 86400

_SESSION_COLS = (
    "s.id, s.user_id, s.created_at, s.last_used_at, s.expires_at, s.absolute_expires_at, "
    "s.remember_me, s.user_agent, s.ip, s.revoked_at, s.revoked_reason, s.amr, s.idp"
)
_N_SESSION = _SESSION_COLS.count(",") + 1
_USER_COLS = "u.id, u.email, u.email_key, u.password_hash, u.disabled, u.created_at, u.roles, u.roles_version"
_N_USER = _USER_COLS.count(",") + 1


def _session(r: Any, o: int = 0) -> SessionRecord:
    return SessionRecord(
        id=r[o], user_id=r[o + 1], created_at=r[o + 2], last_used_at=r[o + 3], expires_at=r[o + 4],
        absolute_expires_at=r[o + 5], remember_me=r[o + 6], user_agent=r[o + 7], ip=r[o + 8],
        revoked_at=r[o + 9], revoked_reason=r[o + 10], amr=tuple(r[o + 11].split()), idp=r[o + 12],
    )  # fmt: skip


def _user(r: Any, o: int = 0) -> UserRecord:
    return UserRecord(
        id=r[o], email=r[o + 1], email_key=r[o + 2], password_hash=r[o + 3], disabled=r[o + 4], created_at=r[o + 5],
        roles=tuple(r[o + 6].split()), roles_version=r[o + 7],
    )  # fmt: skip


_CLIENT_COLS = "id, name, secret_hash, scopes, created_at"


def _client(r: Any) -> ClientRecord:
    return ClientRecord(id=r[0], name=r[1], secret_hash=r[2], scopes=tuple(r[3].split()), created_at=r[4])


class PostgresStore(PostgresAccounts):
    """`Store` on PostgreSQL through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._revoke = _revoke_where

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        """Connects and migrates under an advisory lock, so instances starting together migrate once."""
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, command_timeout=10)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(pool)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                version = await conn.fetchval("SELECT version FROM schema_version")
                if version is None:
                    await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                    version = 0
                if version > len(MIGRATIONS):
                    raise StoreError(f"database schema version {version} is newer than this gateway ({len(MIGRATIONS)})")
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    await conn.execute(script)
                    await conn.execute("UPDATE schema_version SET version = $1", number)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"PostgreSQL migration failed: {exc}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def create_user(self, *, user_id: str, email: str, email_key: str, password_hash: str, now: float) -> UserRecord:
        try:
            await self._pool.execute(
                "INSERT INTO users (id, email, email_key, password_hash, disabled, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, FALSE, $5, $5)",
                user_id, email, email_key, password_hash, now,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"a user with email {email} already exists") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return UserRecord(id=user_id, email=email, email_key=email_key, password_hash=password_hash, disabled=False, created_at=now)

    async def get_user(self, *, email_key: str | None = None, user_id: str | None = None) -> UserRecord | None:
        if email_key is not None:
            rows = await self._fetch(f"SELECT {_USER_COLS} FROM users u WHERE u.email_key = $1", email_key)
        else:
            rows = await self._fetch(f"SELECT {_USER_COLS} FROM users u WHERE u.id = $1", user_id)
        return _user(rows[0]) if rows else None

    async def list_users(self) -> list[UserRecord]:
        rows = await self._fetch(f"SELECT {_USER_COLS} FROM users u ORDER BY u.created_at, u.email_key")
        return [_user(r) for r in rows]

    async def update_user(
        self, user_id: str, *, now: float, password_hash: str | None = None, disabled: bool | None = None
    ) -> list[str]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if password_hash is not None:
                    await conn.execute("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3", password_hash, now, user_id)
                if disabled is not None:
                    await conn.execute("UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3", disabled, now, user_id)
                if password_hash is None and not disabled:
                    return []
                await void_pending(conn, user_id, now)
                reason = "password_changed" if password_hash is not None else "user_disabled"
                return await _revoke_where(conn, "user_id = $3", user_id, now=now, reason=reason)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def rehash_password(self, user_id: str, *, old_hash: str, new_hash: str, now: float) -> bool:
        return bool(await self._exec(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3 AND password_hash = $4",
            new_hash, now, user_id, old_hash,
        ))  # fmt: skip

    async def create_session(self, session: SessionRecord, *, token_hash: str) -> None:
        s = session
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, absolute_expires_at,"
                    " remember_me, user_agent, ip, amr, idp) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    s.id, s.user_id, s.created_at, s.last_used_at, s.expires_at, s.absolute_expires_at,
                    s.remember_me, s.user_agent, s.ip, " ".join(s.amr), s.idp,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
                    token_hash, s.id, s.created_at,
                )  # fmt: skip
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def rotate(
        self,
        *,
        token_hash: str,
        successor_hash: str,
        now: float,
        grace_s: float,
        remember_ttl_s: float,
        session_ttl_s: float,
        limit: Rate | None = None,
    ) -> RotateOutcome:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                token = await conn.fetchrow(
                    "SELECT rotated_at, successor_hash, session_id FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
                    token_hash,
                )
                if token is None:
                    return RotateOutcome(kind="invalid", reason="unknown")
                # A new statement after the lock: in READ COMMITTED it sees what the winner committed.
                row = await conn.fetchrow(
                    f"SELECT {_SESSION_COLS}, {_USER_COLS},"
                    " (SELECT c.rotated_at IS NULL FROM refresh_tokens c WHERE c.token_hash = $2)"
                    " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1 FOR UPDATE OF s",
                    token["session_id"], token["successor_hash"],
                )  # fmt: skip
                session, user, child_is_current = _session(row), _user(row, _N_SESSION), bool(row[_N_SESSION + _N_USER])
                # In this transaction, so a refresh stays one store call; a refusal changes no token.
                if limit is not None and (wait := await _take(conn, [f"refresh:{session.id}"], rate=limit, now=now)):
                    return RotateOutcome(kind="limited", session=session, user=user, reason="rate_limited", retry_after=wait)
                if session.revoked_at is not None:
                    return RotateOutcome(kind="invalid", session=session, user=user, reason="revoked")
                if user.disabled:
                    return RotateOutcome(kind="invalid", session=session, user=user, reason="user_disabled")
                if now >= session.expires_at or now >= session.absolute_expires_at:
                    return RotateOutcome(kind="invalid", session=session, user=user, reason="expired")
                rotated_at = token["rotated_at"]
                if rotated_at is not None:
                    if token["successor_hash"] == successor_hash and child_is_current and now - rotated_at <= grace_s:
                        return RotateOutcome(kind="twin", session=session, user=user, reason="within_grace")
                    await _revoke_where(conn, "id = $3", session.id, now=now, reason="refresh_token_reused")
                    return RotateOutcome(kind="reused", session=session, user=user, reason="refresh_token_reused")
                ttl = remember_ttl_s if session.remember_me else session_ttl_s
                expires_at = min(now + ttl, session.absolute_expires_at)
                await conn.execute(
                    "UPDATE refresh_tokens SET rotated_at = $1, successor_hash = $2 WHERE token_hash = $3",
                    now, successor_hash, token_hash,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
                    successor_hash, session.id, now,
                )  # fmt: skip
                await conn.execute(
                    "UPDATE sessions SET last_used_at = $1, expires_at = $2 WHERE id = $3", now, expires_at, session.id
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return RotateOutcome(kind="rotated", session=replace(session, last_used_at=now, expires_at=expires_at), user=user)

    async def find_session(self, *, token_hash: str | None = None, session_id: str | None = None) -> SessionRecord | None:
        if token_hash is not None:
            rows = await self._fetch(
                f"SELECT {_SESSION_COLS} FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.token_hash = $1",
                token_hash,
            )
        else:
            rows = await self._fetch(f"SELECT {_SESSION_COLS} FROM sessions s WHERE s.id = $1", session_id)
        return _session(rows[0]) if rows else None

    async def list_sessions(self, user_id: str, *, now: float) -> list[SessionRecord]:
        rows = await self._fetch(
            f"SELECT {_SESSION_COLS} FROM sessions s WHERE s.user_id = $1 AND s.revoked_at IS NULL"
            " AND s.expires_at > $2 AND s.absolute_expires_at > $2 ORDER BY s.created_at DESC",
            user_id, now,
        )  # fmt: skip
        return [_session(r) for r in rows]

    async def revoke(
        self, *, now: float, reason: str, session_id: str | None = None, user_id: str | None = None
    ) -> list[str]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if session_id is not None:
                    return await _revoke_where(conn, "id = $3", session_id, now=now, reason=reason)
                return await _revoke_where(conn, "user_id = $3", user_id, now=now, reason=reason)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def count_live_sessions(self, *, now: float) -> int:
        rows = await self._fetch(
            "SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > $1 AND absolute_expires_at > $1", now
        )
        return int(rows[0][0])

    async def revocations_since(self, seq: int, *, not_before: float = 0.0) -> list[RevocationEvent]:
        rows = await self._fetch(
            "SELECT seq, session_id, revoked_at FROM revocations WHERE seq > $1 AND revoked_at >= $2 ORDER BY seq",
            seq, not_before,
        )  # fmt: skip
        return [RevocationEvent(seq=r[0], session_id=r[1], revoked_at=r[2]) for r in rows]

    async def prune(self, *, now: float, revocations_before: float) -> int:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.execute("DELETE FROM sessions WHERE absolute_expires_at < $1", now)
                await conn.execute("DELETE FROM revocations WHERE revoked_at < $1", revocations_before)
                await conn.execute("DELETE FROM access_changes WHERE changed_at < $1", revocations_before)
                await conn.execute("DELETE FROM rate_limits WHERE tat < $1", now)  # a row in the past counts nothing
                # issue 12: dead email tokens and delivered (or abandoned) mails older than a week
                await conn.execute("DELETE FROM email_tokens WHERE expires_at < $1", now - _KEEP_MAIL_S)
                await conn.execute("DELETE FROM mail_outbox WHERE sent_at < $1 OR gave_up_at < $1", now - _KEEP_MAIL_S)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return int(status.split()[-1])

    # -- federated login ---------------------------------------------------------------------

    async def link_identity(self, *, provider: str, subject: str, user_id: str, now: float) -> None:
        try:
            await self._pool.execute(
                "INSERT INTO federated_identities (provider, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
                provider, subject, user_id, now,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"{provider} subject is already linked") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def find_identity(self, *, provider: str, subject: str) -> str | None:
        rows = await self._fetch(
            "SELECT user_id FROM federated_identities WHERE provider = $1 AND subject = $2", provider, subject
        )
        return str(rows[0][0]) if rows else None

    async def record_federated_session(self, *, session_id: str, provider: str, subject: str, sid: str) -> None:
        try:
            await self._pool.execute(
                "INSERT INTO federated_sessions (session_id, provider, subject, sid) VALUES ($1, $2, $3, $4)",
                session_id, provider, subject, sid,
            )  # fmt: skip
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def federated_sessions(
        self, *, provider: str, subject: str | None = None, sid: str | None = None, created_before: float, now: float
    ) -> list[str]:
        if subject is None and sid is None:
            return []
        # A NULL parameter matches anything: sub and sid are each optional in a logout token.
        rows = await self._fetch(
            "SELECT s.id FROM federated_sessions f JOIN sessions s ON s.id = f.session_id"
            " WHERE f.provider = $1 AND ($2::text IS NULL OR f.subject = $2) AND ($3::text IS NULL OR f.sid = $3)"
            " AND s.revoked_at IS NULL AND s.created_at <= $4 AND s.absolute_expires_at > $5 ORDER BY s.created_at",
            provider, subject, sid, created_before, now,
        )  # fmt: skip
        return [r[0] for r in rows]
    # -- authorization: roles and the log of grant changes --------------------------------------

    async def set_user_roles(self, user_id: str, roles: tuple[str, ...], *, now: float) -> UserRecord | None:
        wanted = " ".join(sorted(set(roles)))
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(f"SELECT {_USER_COLS} FROM users u WHERE u.id = $1 FOR UPDATE", user_id)
                if row is None:
                    return None
                user = _user(row)
                if " ".join(user.roles) == wanted:
                    return user
                version = user.roles_version + 1
                await conn.execute(
                    "UPDATE users SET roles = $1, roles_version = $2, updated_at = $3 WHERE id = $4", wanted, version, now, user_id
                )
                await _log_access_change(conn, user_id, version, now=now)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return replace(user, roles=tuple(wanted.split()), roles_version=version)

    async def access_changes_since(self, seq: int, *, not_before: float = 0.0) -> list[AccessChange]:
        rows = await self._fetch(
            "SELECT seq, subject, version, changed_at FROM access_changes WHERE seq > $1 AND changed_at >= $2 ORDER BY seq",
            seq, not_before,
        )  # fmt: skip
        return [AccessChange(seq=r[0], subject=r[1], version=r[2], changed_at=r[3]) for r in rows]

    # -- machine clients -----------------------------------------------------------------------

    async def create_client(self, client: ClientRecord) -> None:
        c = client
        try:
            await self._pool.execute(
                "INSERT INTO clients (id, name, secret_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5)",
                c.id, c.name, c.secret_hash, " ".join(c.scopes), c.created_at,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"a client with id {c.id} already exists") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def get_client(self, client_id: str) -> ClientRecord | None:
        rows = await self._fetch(f"SELECT {_CLIENT_COLS} FROM clients WHERE id = $1", client_id)
        return _client(rows[0]) if rows else None

    async def list_clients(self) -> list[ClientRecord]:
        return [_client(r) for r in await self._fetch(f"SELECT {_CLIENT_COLS} FROM clients ORDER BY created_at, id")]

    async def remove_client(self, client_id: str, *, now: float, version: int) -> bool:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.execute("DELETE FROM clients WHERE id = $1", client_id)
                if status.split()[-1] == "0":
                    return False
                await _log_access_change(conn, client_id, version, now=now)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return True

    # -- shared rate limits (issue 12) ------------------------------------------------------------

    async def take_limit(self, keys: Sequence[str], *, rate: Rate, now: float) -> int:
        try:
            async with self._pool.acquire() as conn:
                return await _take(conn, keys, rate=rate, now=now)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def give_back_limit(self, keys: Sequence[str], *, rate: Rate) -> None:
        try:
            await self._pool.execute(_GIVE_BACK, sorted(set(keys)), gcra_interval(rate))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    # -- second factors (gateway/mfa) --------------------------------------------------------

    async def _exec(self, sql: str, *args: Any) -> int:
        """Runs one statement; the number of rows it touched."""
        try:
            status = await self._pool.execute(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return int(status.split()[-1])

    async def totp_begin(self, user_id: str, *, secret: str, now: float) -> bool:
        # One statement: the upsert only overwrites a pending row, so a confirmed factor is never replaced.
        rows = await self._fetch(
            "INSERT INTO mfa_totp (user_id, secret, confirmed, last_step, created_at) VALUES ($1, $2, FALSE, -1, $3)"
            " ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, last_step = -1, created_at = EXCLUDED.created_at"
            " WHERE mfa_totp.confirmed = FALSE RETURNING user_id",
            user_id, secret, now,
        )  # fmt: skip
        return bool(rows)

    async def totp_get(self, user_id: str) -> TotpRecord | None:
        rows = await self._fetch(
            "SELECT user_id, secret, confirmed, last_step, created_at FROM mfa_totp WHERE user_id = $1", user_id
        )
        return TotpRecord(rows[0][0], rows[0][1], rows[0][2], rows[0][3], rows[0][4]) if rows else None

    async def totp_confirm(self, user_id: str, *, step: int, recovery_hashes: list[str], now: float) -> bool:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    "UPDATE mfa_totp SET confirmed = TRUE, last_step = $1 WHERE user_id = $2 AND NOT confirmed AND last_step < $1",
                    step, user_id,
                )  # fmt: skip
                if status.split()[-1] == "0":
                    return False
                await _replace_codes(conn, user_id, recovery_hashes, now)
                return True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def totp_accept_step(self, user_id: str, *, step: int) -> bool:
        # The row lock of one UPDATE is what makes a code work once: a concurrent twin re-reads last_step and fails.
        return bool(await self._exec(
            "UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND confirmed AND last_step < $1", step, user_id
        ))  # fmt: skip

    async def totp_delete(self, user_id: str) -> bool:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM mfa_recovery_codes WHERE user_id = $1", user_id)
                status: str = await conn.execute("DELETE FROM mfa_totp WHERE user_id = $1", user_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return status.split()[-1] != "0"

    async def recovery_replace(self, user_id: str, *, hashes: list[str], now: float) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await _replace_codes(conn, user_id, hashes, now)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def recovery_use(self, user_id: str, *, code_hash: str, now: float) -> bool:
        return bool(await self._exec(
            "UPDATE mfa_recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
            now, user_id, code_hash,
        ))  # fmt: skip

    async def recovery_count(self, user_id: str) -> int:
        rows = await self._fetch("SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL", user_id)
        return int(rows[0][0])

    async def challenge_put(self, challenge: ChallengeRecord, *, now: float) -> None:
        c = challenge
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM mfa_challenges WHERE expires_at <= $1", now)
                await conn.execute(
                    "INSERT INTO mfa_challenges (key_hash, kind, user_id, payload, expires_at, tries) VALUES ($1, $2, $3, $4, $5, $6)",
                    c.key_hash, c.kind, c.user_id, c.payload, c.expires_at, c.tries,
                )  # fmt: skip
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def challenge_claim(self, challenge: ChallengeRecord, *, now: float) -> bool:
        c = challenge
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM mfa_challenges WHERE expires_at <= $1", now)
                done = await conn.execute(
                    "INSERT INTO mfa_challenges (key_hash, kind, user_id, payload, expires_at, tries) VALUES ($1, $2, $3, $4, $5, $6)"
                    " ON CONFLICT (key_hash) DO NOTHING",
                    c.key_hash, c.kind, c.user_id, c.payload, c.expires_at, c.tries,
                )  # fmt: skip
                return bool(done == "INSERT 0 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def challenge_try(self, key_hash: str, *, kind: str, now: float, max_tries: int) -> ChallengeRecord | None:
        rows = await self._fetch(
            "UPDATE mfa_challenges SET tries = tries + 1 WHERE key_hash = $1 AND kind = $2 AND expires_at > $3 AND tries < $4"
            f" RETURNING {_CHALLENGE_COLS}",
            key_hash, kind, now, max_tries,
        )  # fmt: skip
        return ChallengeRecord(*rows[0]) if rows else None

    async def challenge_take(self, key_hash: str, *, kind: str, now: float) -> ChallengeRecord | None:
        rows = await self._fetch(
            f"DELETE FROM mfa_challenges WHERE key_hash = $1 AND kind = $2 RETURNING {_CHALLENGE_COLS}", key_hash, kind
        )
        return ChallengeRecord(*rows[0]) if rows and rows[0][4] > now else None

    async def passkey_add(self, passkey: PasskeyRecord) -> None:
        p = passkey
        try:
            await self._pool.execute(
                f"INSERT INTO passkeys ({_PASSKEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                p.id, p.user_id, p.credential_id, p.public_key, p.sign_count, p.name, " ".join(p.transports),
                p.created_at, p.last_used_at,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("this passkey is registered already") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def passkey_list(self, user_id: str) -> list[PasskeyRecord]:
        rows = await self._fetch(f"SELECT {_PASSKEY_COLS} FROM passkeys WHERE user_id = $1 ORDER BY created_at, id", user_id)
        return [_passkey(r) for r in rows]

    async def passkey_find(self, credential_id: str) -> PasskeyRecord | None:
        rows = await self._fetch(f"SELECT {_PASSKEY_COLS} FROM passkeys WHERE credential_id = $1", credential_id)
        return _passkey(rows[0]) if rows else None

    async def passkey_used(self, passkey_id: str, *, old_count: int, new_count: int, now: float) -> bool:
        return bool(await self._exec(
            "UPDATE passkeys SET sign_count = $1, last_used_at = $2 WHERE id = $3 AND sign_count = $4",
            new_count, now, passkey_id, old_count,
        ))  # fmt: skip

    async def passkey_delete(self, user_id: str, passkey_id: str) -> bool:
        return bool(await self._exec("DELETE FROM passkeys WHERE id = $1 AND user_id = $2", passkey_id, user_id))

    async def mfa_reset(self, user_id: str, *, now: float) -> list[str]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                for table in ("mfa_totp", "mfa_recovery_codes", "mfa_challenges", "passkeys"):
                    await conn.execute(f"DELETE FROM {table} WHERE user_id = $1", user_id)
                return await _revoke_where(conn, "user_id = $3", user_id, now=now, reason="mfa_reset")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def aclose(self) -> None:
        await self._pool.close()


_CHALLENGE_COLS = "key_hash, kind, user_id, payload, expires_at, tries"
_PASSKEY_COLS = "id, user_id, credential_id, public_key, sign_count, name, transports, created_at, last_used_at"


def _passkey(r: Any) -> PasskeyRecord:
    return PasskeyRecord(
        id=r[0], user_id=r[1], credential_id=r[2], public_key=r[3], sign_count=r[4], name=r[5],
        transports=tuple(r[6].split()), created_at=r[7], last_used_at=r[8],
    )  # fmt: skip


async def _replace_codes(conn: asyncpg.Connection, user_id: str, hashes: list[str], now: float) -> None:
    await conn.execute("DELETE FROM mfa_recovery_codes WHERE user_id = $1", user_id)
    await conn.executemany(
        "INSERT INTO mfa_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)", [(user_id, h, now) for h in hashes]
    )


async def _revoke_where(conn: asyncpg.Connection, where: str, *params: Any, now: float, reason: str) -> list[str]:
    """Revokes the live sessions matching `where` (its parameters are $3, $4...) and logs each revocation."""
    rows = await conn.fetch(
        f"UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE {where} AND revoked_at IS NULL RETURNING id",
        now, reason, *params,
    )  # fmt: skip
    ids = [r[0] for r in rows]
    if ids:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _REVOCATION_LOCK)
        await conn.executemany("INSERT INTO revocations (session_id, revoked_at) VALUES ($1, $2)", [(i, now) for i in ids])
    return ids


async def _log_access_change(conn: asyncpg.Connection, subject: str, version: int, *, now: float) -> None:
    """Appends to the grant-change log; the lock held to commit keeps seq order equal to commit order."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ACCESS_LOCK)
    await conn.execute("INSERT INTO access_changes (subject, version, changed_at) VALUES ($1, $2, $3)", subject, version, now)


# All keys in one statement (one round trip). ON CONFLICT DO UPDATE locks each row and reads its
# latest committed version, so concurrent hits from any number of instances serialize per key; keys
# are sorted so two statements never wait on each other's rows. SET expressions read the old row.
_GCRA = (
    "INSERT INTO rate_limits AS r (key, tat, allowed)"
    " SELECT k, $2::float8 + $3::float8, TRUE FROM unnest($1::text[]) AS k"
    " ON CONFLICT (key) DO UPDATE SET"
    " allowed = GREATEST(r.tat, $2::float8) + $3::float8 - $2::float8 <= $4::float8,"
    " tat = CASE WHEN GREATEST(r.tat, $2::float8) + $3::float8 - $2::float8 <= $4::float8"
    " THEN GREATEST(r.tat, $2::float8) + $3::float8 ELSE r.tat END"
    " RETURNING key, allowed, tat"
)
_GIVE_BACK = "UPDATE rate_limits SET tat = tat - $2::float8 WHERE key = ANY($1::text[])"


async def _take(conn: asyncpg.Connection, keys: Sequence[str], *, rate: Rate, now: float) -> int:
    """GCRA hit on every key in one statement; a refusal gives back the hits it took."""
    interval = gcra_interval(rate)
    rows = await conn.fetch(_GCRA, sorted(set(keys)), now, interval, rate.period_s + GCRA_SLACK)
    refused = [r for r in rows if not r["allowed"]]
    if not refused:
        return 0
    taken = sorted(r["key"] for r in rows if r["allowed"])
    if taken:
        await conn.execute(_GIVE_BACK, taken, interval)
    return max(gcra_wait(r["tat"], rate=rate, now=now) for r in refused)
