"""The SQLite backend: schema, migrations, and every store operation as one function on the database thread.

One thread per store owns a plain `sqlite3` connection (see `sqlite_runner`): a store call is one
synchronous function queued to it, so it costs one hop there and back, and writes that queue up
while the thread is busy share one transaction (group commit).

Must not: import aiohttp, tokens or another backend; run SQL outside an operation function (that is
what keeps each operation atomic and alone on the connection); or start a write transaction other
than BEGIN IMMEDIATE (other processes on the same file queue behind the busy timeout instead of failing).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

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
from gateway.store.sqlite_accounts import ACCOUNTS_MIGRATION, SqliteAccounts, void_pending
from gateway.store.sqlite_runner import Op, Runner

__all__ = ["MIGRATIONS", "SqliteStore"]

T = TypeVar("T")

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
        created_at REAL NOT NULL,
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
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        subject TEXT NOT NULL,
        version INTEGER NOT NULL,
        changed_at REAL NOT NULL
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
        created_at REAL NOT NULL
    );
    """,
    # issue 12: shared rate limits (GCRA, see gateway.store)
    """
    CREATE TABLE rate_limits (
        key TEXT PRIMARY KEY,
        tat REAL NOT NULL,
        allowed INTEGER NOT NULL
    );
    """,
    # issue 12: email verification, email tokens, the mail outbox (see sqlite_accounts)
    ACCOUNTS_MIGRATION,
    # Second factors (gateway/mfa): TOTP secrets (encrypted), recovery-code hashes, challenges, passkeys.
    """
    CREATE TABLE mfa_totp (
        user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        secret TEXT NOT NULL,
        confirmed INTEGER NOT NULL DEFAULT 0,
        last_step INTEGER NOT NULL DEFAULT -1,
        created_at REAL NOT NULL
    );
    CREATE TABLE mfa_recovery_codes (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        code_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        used_at REAL,
        PRIMARY KEY (user_id, code_hash)
    );
    CREATE TABLE mfa_challenges (
        key_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
        payload TEXT NOT NULL DEFAULT '',
        expires_at REAL NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX mfa_challenges_expiry ON mfa_challenges(expires_at);
    CREATE TABLE passkeys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        credential_id TEXT NOT NULL UNIQUE,
        public_key TEXT NOT NULL,
        sign_count INTEGER NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        transports TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        last_used_at REAL
    );
    CREATE INDEX passkeys_user ON passkeys(user_id);
    """,
)

_KEEP_MAIL_S = 7 * 86400

_SESSION_COLS = (
    "s.id, s.user_id, s.created_at, s.last_used_at, s.expires_at, s.absolute_expires_at, "
    "s.remember_me, s.user_agent, s.ip, s.revoked_at, s.revoked_reason, s.amr, s.idp"
)
_N_SESSION = _SESSION_COLS.count(",") + 1
_USER_COLS = "u.id, u.email, u.email_key, u.password_hash, u.disabled, u.created_at, u.roles, u.roles_version"
_N_USER = _USER_COLS.count(",") + 1
_ROTATE_LOOKUP = (
    f"SELECT t.rotated_at, t.successor_hash, {_SESSION_COLS}, {_USER_COLS},"
    " (SELECT c.rotated_at IS NULL FROM refresh_tokens c WHERE c.token_hash = t.successor_hash)"
    " FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id"
    " WHERE t.token_hash = ?"
)


def _session(row: Iterable[Any]) -> SessionRecord:
    r = list(row)
    return SessionRecord(
        id=r[0], user_id=r[1], created_at=r[2], last_used_at=r[3], expires_at=r[4], absolute_expires_at=r[5],
        remember_me=bool(r[6]), user_agent=r[7], ip=r[8], revoked_at=r[9], revoked_reason=r[10], amr=tuple(r[11].split()), idp=r[12],
    )  # fmt: skip


def _user(row: Iterable[Any]) -> UserRecord:
    r = list(row)
    return UserRecord(
        id=r[0], email=r[1], email_key=r[2], password_hash=r[3], disabled=bool(r[4]), created_at=r[5],
        roles=tuple(r[6].split()), roles_version=r[7],
    )  # fmt: skip


_CLIENT_COLS = "id, name, secret_hash, scopes, created_at"


def _client(r: Any) -> ClientRecord:
    return ClientRecord(id=r[0], name=r[1], secret_hash=r[2], scopes=tuple(r[3].split()), created_at=r[4])


def _connect(path: Path) -> sqlite3.Connection:
    """Runs on the database thread: opens (creating if needed) the file, sets WAL and migrates."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves, so a write transaction starts as IMMEDIATE.
        db = sqlite3.connect(str(path), isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(db)
    except sqlite3.Error as exc:
        db.close()
        raise StoreError(f"cannot prepare SQLite database {path}: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = db.execute("SELECT version FROM schema_version").fetchall()
        version = rows[0][0] if rows else 0
        if not rows:
            db.execute("INSERT INTO schema_version (version) VALUES (0)")
        if version > len(MIGRATIONS):
            raise StoreError(f"database schema version {version} is newer than this gateway ({len(MIGRATIONS)})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (number,))
    except BaseException:
        if db.in_transaction:  # some errors (I/O, disk full) already rolled it back
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteStore(SqliteAccounts):
    """`Store` on one SQLite file through one connection, owned by one thread, per process."""

    def __init__(self, runner: Runner) -> None:
        self._revoke = _revoke_where
        self._runner = runner
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Opens (creating if needed) the file, sets WAL and migrates."""
        # A plain sqlite3 connection on our own thread rather than aiosqlite: aiosqlite runs a whole
        # function on its thread only through private API, and a store operation must be one function there.
        return cls(await Runner.start(lambda: _connect(path)))

    async def _do(self, fn: Op[T], *, write: bool) -> T:
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        return await self._runner.submit(fn, write=write)

    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return await self._do(lambda db: db.execute(sql, params).fetchall(), write=False)

    async def create_user(self, *, user_id: str, email: str, email_key: str, password_hash: str, now: float) -> UserRecord:
        def op(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO users (id, email, email_key, password_hash, disabled, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (user_id, email, email_key, password_hash, now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"a user with email {email} already exists") from exc

        await self._do(op, write=True)
        return UserRecord(id=user_id, email=email, email_key=email_key, password_hash=password_hash, disabled=False, created_at=now)

    async def get_user(self, *, email_key: str | None = None, user_id: str | None = None) -> UserRecord | None:
        if email_key is not None:
            rows = await self._rows(f"SELECT {_USER_COLS} FROM users u WHERE u.email_key = ?", (email_key,))
        else:
            rows = await self._rows(f"SELECT {_USER_COLS} FROM users u WHERE u.id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    async def list_users(self) -> list[UserRecord]:
        rows = await self._rows(f"SELECT {_USER_COLS} FROM users u ORDER BY u.created_at, u.email_key")
        return [_user(r) for r in rows]

    async def update_user(
        self, user_id: str, *, now: float, password_hash: str | None = None, disabled: bool | None = None
    ) -> list[str]:
        def op(db: sqlite3.Connection) -> list[str]:
            if password_hash is not None:
                db.execute("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?", (password_hash, now, user_id))
            if disabled is not None:
                db.execute("UPDATE users SET disabled = ?, updated_at = ? WHERE id = ?", (int(disabled), now, user_id))
            if password_hash is None and not disabled:
                return []
            void_pending(db, user_id, now)
            reason = "password_changed" if password_hash is not None else "user_disabled"
            return _revoke_where(db, "user_id = ?", (user_id,), now=now, reason=reason)

        return await self._do(op, write=True)

    async def rehash_password(self, user_id: str, *, old_hash: str, new_hash: str, now: float) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            return bool(db.execute(
                "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ? AND password_hash = ?",
                (new_hash, now, user_id, old_hash),
            ).rowcount)  # fmt: skip

        return await self._do(op, write=True)

    async def create_session(self, session: SessionRecord, *, token_hash: str) -> None:
        s = session

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, absolute_expires_at,"
                " remember_me, user_agent, ip, amr, idp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (s.id, s.user_id, s.created_at, s.last_used_at, s.expires_at, s.absolute_expires_at,
                 int(s.remember_me), s.user_agent, s.ip, " ".join(s.amr), s.idp),
            )  # fmt: skip
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?, ?, ?)",
                (token_hash, s.id, s.created_at),
            )

        await self._do(op, write=True)

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
        def op(db: sqlite3.Connection) -> RotateOutcome:
            row = db.execute(_ROTATE_LOOKUP, (token_hash,)).fetchone()
            if row is None:
                return RotateOutcome(kind="invalid", reason="unknown")
            rotated_at, stored_successor = row[0], row[1]
            session, user, child_is_current = (
                _session(row[2 : 2 + _N_SESSION]),
                _user(row[2 + _N_SESSION : 2 + _N_SESSION + _N_USER]),
                bool(row[2 + _N_SESSION + _N_USER]),
            )
            if limit is not None and (wait := _take(db, [f"refresh:{session.id}"], rate=limit, now=now)):
                return RotateOutcome(kind="limited", session=session, user=user, reason="rate_limited", retry_after=wait)
            if session.revoked_at is not None:
                return RotateOutcome(kind="invalid", session=session, user=user, reason="revoked")
            if user.disabled:
                return RotateOutcome(kind="invalid", session=session, user=user, reason="user_disabled")
            if now >= session.expires_at or now >= session.absolute_expires_at:
                return RotateOutcome(kind="invalid", session=session, user=user, reason="expired")
            if rotated_at is not None:
                if stored_successor == successor_hash and child_is_current and now - rotated_at <= grace_s:
                    return RotateOutcome(kind="twin", session=session, user=user, reason="within_grace")
                _revoke_where(db, "id = ?", (session.id,), now=now, reason="refresh_token_reused")
                return RotateOutcome(kind="reused", session=session, user=user, reason="refresh_token_reused")
            ttl = remember_ttl_s if session.remember_me else session_ttl_s
            expires_at = min(now + ttl, session.absolute_expires_at)
            db.execute(
                "UPDATE refresh_tokens SET rotated_at = ?, successor_hash = ? WHERE token_hash = ? AND rotated_at IS NULL",
                (now, successor_hash, token_hash),
            )
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?, ?, ?)",
                (successor_hash, session.id, now),
            )
            db.execute("UPDATE sessions SET last_used_at = ?, expires_at = ? WHERE id = ?", (now, expires_at, session.id))
            return RotateOutcome(kind="rotated", session=replace(session, last_used_at=now, expires_at=expires_at), user=user)

        return await self._do(op, write=True)

    async def find_session(self, *, token_hash: str | None = None, session_id: str | None = None) -> SessionRecord | None:
        if token_hash is not None:
            rows = await self._rows(
                f"SELECT {_SESSION_COLS} FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.token_hash = ?",
                (token_hash,),
            )
        else:
            rows = await self._rows(f"SELECT {_SESSION_COLS} FROM sessions s WHERE s.id = ?", (session_id,))
        return _session(rows[0]) if rows else None

    async def list_sessions(self, user_id: str, *, now: float) -> list[SessionRecord]:
        rows = await self._rows(
            f"SELECT {_SESSION_COLS} FROM sessions s WHERE s.user_id = ? AND s.revoked_at IS NULL"
            " AND s.expires_at > ? AND s.absolute_expires_at > ? ORDER BY s.created_at DESC",
            (user_id, now, now),
        )
        return [_session(r) for r in rows]

    async def revoke(
        self, *, now: float, reason: str, session_id: str | None = None, user_id: str | None = None
    ) -> list[str]:
        where, param = ("id = ?", session_id) if session_id is not None else ("user_id = ?", user_id)
        return await self._do(lambda db: _revoke_where(db, where, (param,), now=now, reason=reason), write=True)

    async def count_live_sessions(self, *, now: float) -> int:
        rows = await self._rows(
            "SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > ? AND absolute_expires_at > ?",
            (now, now),
        )
        return int(rows[0][0])

    async def revocations_since(self, seq: int, *, not_before: float = 0.0) -> list[RevocationEvent]:
        rows = await self._rows(
            "SELECT seq, session_id, revoked_at FROM revocations WHERE seq > ? AND revoked_at >= ? ORDER BY seq",
            (seq, not_before),
        )
        return [RevocationEvent(seq=r[0], session_id=r[1], revoked_at=r[2]) for r in rows]

    async def prune(self, *, now: float, revocations_before: float) -> int:
        def op(db: sqlite3.Connection) -> int:
            count = db.execute("DELETE FROM sessions WHERE absolute_expires_at < ?", (now,)).rowcount
            db.execute("DELETE FROM revocations WHERE revoked_at < ?", (revocations_before,))
            db.execute("DELETE FROM access_changes WHERE changed_at < ?", (revocations_before,))
            db.execute("DELETE FROM rate_limits WHERE tat < ?", (now,))  # a row in the past counts nothing
            # issue 12: dead email tokens and delivered (or abandoned) mails older than a week
            db.execute("DELETE FROM email_tokens WHERE expires_at < ?", (now - _KEEP_MAIL_S,))
            db.execute("DELETE FROM mail_outbox WHERE sent_at < ? OR gave_up_at < ?", (now - _KEEP_MAIL_S, now - _KEEP_MAIL_S))
            return count

        return await self._do(op, write=True)

    # -- federated login ---------------------------------------------------------------------

    async def link_identity(self, *, provider: str, subject: str, user_id: str, now: float) -> None:
        def op(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO federated_identities (provider, subject, user_id, created_at) VALUES (?, ?, ?, ?)",
                    (provider, subject, user_id, now),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"{provider} subject is already linked") from exc

        await self._do(op, write=True)

    async def find_identity(self, *, provider: str, subject: str) -> str | None:
        rows = await self._rows(
            "SELECT user_id FROM federated_identities WHERE provider = ? AND subject = ?", (provider, subject)
        )
        return str(rows[0][0]) if rows else None

    async def record_federated_session(self, *, session_id: str, provider: str, subject: str, sid: str) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO federated_sessions (session_id, provider, subject, sid) VALUES (?, ?, ?, ?)",
                (session_id, provider, subject, sid),
            )

        await self._do(op, write=True)

    async def federated_sessions(
        self, *, provider: str, subject: str | None = None, sid: str | None = None, created_before: float, now: float
    ) -> list[str]:
        if subject is None and sid is None:
            return []
        where, params = ["f.provider = ?"], [provider]
        if subject is not None:
            where.append("f.subject = ?")
            params.append(subject)
        if sid is not None:
            where.append("f.sid = ?")
            params.append(sid)
        rows = await self._rows(
            "SELECT s.id FROM federated_sessions f JOIN sessions s ON s.id = f.session_id WHERE "
            + " AND ".join(where)
            + " AND s.revoked_at IS NULL AND s.created_at <= ? AND s.absolute_expires_at > ? ORDER BY s.created_at",
            (*params, created_before, now),
        )
        return [r[0] for r in rows]
    # -- authorization: roles and the log of grant changes --------------------------------------

    async def set_user_roles(self, user_id: str, roles: tuple[str, ...], *, now: float) -> UserRecord | None:
        wanted = " ".join(sorted(set(roles)))

        def op(db: sqlite3.Connection) -> UserRecord | None:
            row = db.execute(f"SELECT {_USER_COLS} FROM users u WHERE u.id = ?", (user_id,)).fetchone()
            if row is None:
                return None
            user = _user(row)
            if " ".join(user.roles) == wanted:
                return user
            version = user.roles_version + 1
            db.execute("UPDATE users SET roles = ?, roles_version = ?, updated_at = ? WHERE id = ?", (wanted, version, now, user_id))
            db.execute("INSERT INTO access_changes (subject, version, changed_at) VALUES (?, ?, ?)", (user_id, version, now))
            return replace(user, roles=tuple(wanted.split()), roles_version=version)

        return await self._do(op, write=True)

    async def access_changes_since(self, seq: int, *, not_before: float = 0.0) -> list[AccessChange]:
        rows = await self._rows(
            "SELECT seq, subject, version, changed_at FROM access_changes WHERE seq > ? AND changed_at >= ? ORDER BY seq",
            (seq, not_before),
        )
        return [AccessChange(seq=r[0], subject=r[1], version=r[2], changed_at=r[3]) for r in rows]

    # -- machine clients -----------------------------------------------------------------------

    async def create_client(self, client: ClientRecord) -> None:
        c = client

        def op(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO clients (id, name, secret_hash, scopes, created_at) VALUES (?, ?, ?, ?, ?)",
                    (c.id, c.name, c.secret_hash, " ".join(c.scopes), c.created_at),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"a client with id {c.id} already exists") from exc

        await self._do(op, write=True)

    async def get_client(self, client_id: str) -> ClientRecord | None:
        rows = await self._rows(f"SELECT {_CLIENT_COLS} FROM clients WHERE id = ?", (client_id,))
        return _client(rows[0]) if rows else None

    async def list_clients(self) -> list[ClientRecord]:
        return [_client(r) for r in await self._rows(f"SELECT {_CLIENT_COLS} FROM clients ORDER BY created_at, id")]

    async def remove_client(self, client_id: str, *, now: float, version: int) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            if db.execute("DELETE FROM clients WHERE id = ?", (client_id,)).rowcount == 0:
                return False
            db.execute("INSERT INTO access_changes (subject, version, changed_at) VALUES (?, ?, ?)", (client_id, version, now))
            return True

        return await self._do(op, write=True)

    # -- shared rate limits (issue 12) ------------------------------------------------------------

    async def take_limit(self, keys: Sequence[str], *, rate: Rate, now: float) -> int:
        return await self._do(lambda db: _take(db, keys, rate=rate, now=now), write=True)

    async def give_back_limit(self, keys: Sequence[str], *, rate: Rate) -> None:
        interval = gcra_interval(rate)

        def op(db: sqlite3.Connection) -> None:
            rows = [(interval, k) for k in dict.fromkeys(keys)]
            db.executemany("UPDATE rate_limits SET tat = tat - ? WHERE key = ?", rows)

        await self._do(op, write=True)

    # -- second factors (gateway/mfa) --------------------------------------------------------

    async def totp_begin(self, user_id: str, *, secret: str, now: float) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT confirmed FROM mfa_totp WHERE user_id = ?", (user_id,)).fetchone()
            if row is not None and row[0]:
                return False
            db.execute(
                "INSERT OR REPLACE INTO mfa_totp (user_id, secret, confirmed, last_step, created_at) VALUES (?, ?, 0, -1, ?)",
                (user_id, secret, now),
            )
            return True

        return await self._do(op, write=True)

    async def totp_get(self, user_id: str) -> TotpRecord | None:
        rows = await self._rows(
            "SELECT user_id, secret, confirmed, last_step, created_at FROM mfa_totp WHERE user_id = ?", (user_id,)
        )
        return TotpRecord(rows[0][0], rows[0][1], bool(rows[0][2]), rows[0][3], rows[0][4]) if rows else None

    async def totp_confirm(self, user_id: str, *, step: int, recovery_hashes: list[str], now: float) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            done = db.execute(
                "UPDATE mfa_totp SET confirmed = 1, last_step = ? WHERE user_id = ? AND confirmed = 0 AND last_step < ?",
                (step, user_id, step),
            ).rowcount
            if done:
                _replace_codes(db, user_id, recovery_hashes, now)
            return bool(done)

        return await self._do(op, write=True)

    async def totp_accept_step(self, user_id: str, *, step: int) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            return bool(db.execute(
                "UPDATE mfa_totp SET last_step = ? WHERE user_id = ? AND confirmed = 1 AND last_step < ?", (step, user_id, step)
            ).rowcount)  # fmt: skip

        return await self._do(op, write=True)

    async def totp_delete(self, user_id: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM mfa_recovery_codes WHERE user_id = ?", (user_id,))
            return bool(db.execute("DELETE FROM mfa_totp WHERE user_id = ?", (user_id,)).rowcount)

        return await self._do(op, write=True)

    async def recovery_replace(self, user_id: str, *, hashes: list[str], now: float) -> None:
        await self._do(lambda db: _replace_codes(db, user_id, hashes, now), write=True)

    async def recovery_use(self, user_id: str, *, code_hash: str, now: float) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            return bool(db.execute(
                "UPDATE mfa_recovery_codes SET used_at = ? WHERE user_id = ? AND code_hash = ? AND used_at IS NULL",
                (now, user_id, code_hash),
            ).rowcount)  # fmt: skip

        return await self._do(op, write=True)

    async def recovery_count(self, user_id: str) -> int:
        rows = await self._rows("SELECT count(*) FROM mfa_recovery_codes WHERE user_id = ? AND used_at IS NULL", (user_id,))
        return int(rows[0][0])

    async def challenge_put(self, challenge: ChallengeRecord, *, now: float) -> None:
        c = challenge

        def op(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM mfa_challenges WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT INTO mfa_challenges (key_hash, kind, user_id, payload, expires_at, tries) VALUES (?, ?, ?, ?, ?, ?)",
                (c.key_hash, c.kind, c.user_id, c.payload, c.expires_at, c.tries),
            )

        await self._do(op, write=True)

    async def challenge_claim(self, challenge: ChallengeRecord, *, now: float) -> bool:
        c = challenge

        def op(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM mfa_challenges WHERE expires_at <= ?", (now,))
            return bool(db.execute(
                "INSERT INTO mfa_challenges (key_hash, kind, user_id, payload, expires_at, tries) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key_hash) DO NOTHING",
                (c.key_hash, c.kind, c.user_id, c.payload, c.expires_at, c.tries),
            ).rowcount)  # fmt: skip

        return await self._do(op, write=True)

    async def challenge_try(self, key_hash: str, *, kind: str, now: float, max_tries: int) -> ChallengeRecord | None:
        def op(db: sqlite3.Connection) -> ChallengeRecord | None:
            done = db.execute(
                "UPDATE mfa_challenges SET tries = tries + 1 WHERE key_hash = ? AND kind = ? AND expires_at > ? AND tries < ?",
                (key_hash, kind, now, max_tries),
            ).rowcount
            if not done:
                return None
            row = db.execute(f"SELECT {_CHALLENGE_COLS} FROM mfa_challenges WHERE key_hash = ?", (key_hash,)).fetchone()
            return ChallengeRecord(*row)

        return await self._do(op, write=True)

    async def challenge_take(self, key_hash: str, *, kind: str, now: float) -> ChallengeRecord | None:
        def op(db: sqlite3.Connection) -> ChallengeRecord | None:
            row = db.execute(
                f"DELETE FROM mfa_challenges WHERE key_hash = ? AND kind = ? RETURNING {_CHALLENGE_COLS}", (key_hash, kind)
            ).fetchone()
            return ChallengeRecord(*row) if row is not None and row[4] > now else None

        return await self._do(op, write=True)

    async def passkey_add(self, passkey: PasskeyRecord) -> None:
        p = passkey

        def op(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    f"INSERT INTO passkeys ({_PASSKEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (p.id, p.user_id, p.credential_id, p.public_key, p.sign_count, p.name, " ".join(p.transports),
                     p.created_at, p.last_used_at),
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise Conflict("this passkey is registered already") from exc

        await self._do(op, write=True)

    async def passkey_list(self, user_id: str) -> list[PasskeyRecord]:
        rows = await self._rows(f"SELECT {_PASSKEY_COLS} FROM passkeys WHERE user_id = ? ORDER BY created_at, id", (user_id,))
        return [_passkey(r) for r in rows]

    async def passkey_find(self, credential_id: str) -> PasskeyRecord | None:
        rows = await self._rows(f"SELECT {_PASSKEY_COLS} FROM passkeys WHERE credential_id = ?", (credential_id,))
        return _passkey(rows[0]) if rows else None

    async def passkey_used(self, passkey_id: str, *, old_count: int, new_count: int, now: float) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            return bool(db.execute(
                "UPDATE passkeys SET sign_count = ?, last_used_at = ? WHERE id = ? AND sign_count = ?",
                (new_count, now, passkey_id, old_count),
            ).rowcount)  # fmt: skip

        return await self._do(op, write=True)

    async def passkey_delete(self, user_id: str, passkey_id: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            return bool(db.execute("DELETE FROM passkeys WHERE id = ? AND user_id = ?", (passkey_id, user_id)).rowcount)

        return await self._do(op, write=True)

    async def mfa_reset(self, user_id: str, *, now: float) -> list[str]:
        def op(db: sqlite3.Connection) -> list[str]:
            for table in ("mfa_totp", "mfa_recovery_codes", "mfa_challenges", "passkeys"):
                db.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            return _revoke_where(db, "user_id = ?", (user_id,), now=now, reason="mfa_reset")

        return await self._do(op, write=True)

    async def ping(self) -> None:
        await self._rows("SELECT 1")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._runner.stop()


_CHALLENGE_COLS = "key_hash, kind, user_id, payload, expires_at, tries"
_PASSKEY_COLS = "id, user_id, credential_id, public_key, sign_count, name, transports, created_at, last_used_at"


def _passkey(r: Any) -> PasskeyRecord:
    return PasskeyRecord(
        id=r[0], user_id=r[1], credential_id=r[2], public_key=r[3], sign_count=r[4], name=r[5],
        transports=tuple(r[6].split()), created_at=r[7], last_used_at=r[8],
    )  # fmt: skip


def _replace_codes(db: sqlite3.Connection, user_id: str, hashes: list[str], now: float) -> None:
    db.execute("DELETE FROM mfa_recovery_codes WHERE user_id = ?", (user_id,))
    db.executemany(
        "INSERT INTO mfa_recovery_codes (user_id, code_hash, created_at) VALUES (?, ?, ?)", [(user_id, h, now) for h in hashes]
    )


def _revoke_where(db: sqlite3.Connection, where: str, params: tuple[Any, ...], *, now: float, reason: str) -> list[str]:
    ids = [r[0] for r in db.execute(f"SELECT id FROM sessions WHERE {where} AND revoked_at IS NULL", params)]
    if ids:
        db.execute(
            f"UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE {where} AND revoked_at IS NULL",
            (now, reason, *params),
        )
        db.executemany("INSERT INTO revocations (session_id, revoked_at) VALUES (?, ?)", [(i, now) for i in ids])
    return ids


# One statement per key: SET expressions all read the row as it was, so `allowed` and `tat` agree.
_GCRA = (
    "INSERT INTO rate_limits (key, tat, allowed) VALUES (:key, :now + :interval, 1)"
    " ON CONFLICT (key) DO UPDATE SET"
    " allowed = max(tat, :now) + :interval - :now <= :limit,"
    " tat = CASE WHEN max(tat, :now) + :interval - :now <= :limit THEN max(tat, :now) + :interval ELSE tat END"
    " RETURNING allowed, tat"
)


def _take(db: sqlite3.Connection, keys: Sequence[str], *, rate: Rate, now: float) -> int:
    """GCRA hit on each key inside the caller's transaction; a refusal gives back the hits it took."""
    interval = gcra_interval(rate)
    params = {"now": now, "interval": interval, "limit": rate.period_s + GCRA_SLACK}
    taken: list[str] = []
    wait = 0
    for key in dict.fromkeys(keys):
        allowed, tat = db.execute(_GCRA, {**params, "key": key}).fetchone()
        if allowed:
            taken.append(key)
        else:
            wait = max(wait, gcra_wait(tat, rate=rate, now=now))
    if wait and taken:
        db.executemany("UPDATE rate_limits SET tat = tat - ? WHERE key = ?", [(interval, k) for k in taken])
    return wait
