"""The SQLite side of self-service accounts: verification state, email tokens and the mail outbox.

A mixin of `SqliteStore`: every method is one operation function on the database thread, as in
`sqlite.py`, so each is atomic and, on one file shared by several processes, serialized by SQLite's
write lock (BEGIN IMMEDIATE): a mail is leased to one sender at a time.

Must not: import aiohttp, tokens or another backend; hold a token in plaintext (only the outbox's
mail text does, until it is sent).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.store import EmailToken, NewMail, OutboxMail

__all__ = ["ACCOUNTS_MIGRATION", "SqliteAccounts", "void_pending"]

T = TypeVar("T")

# Existing users (made by `gateway users add`) default to verified; sign-up inserts 0.
ACCOUNTS_MIGRATION = """
    ALTER TABLE users ADD COLUMN email_verified INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE email_tokens (
        token_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    CREATE INDEX email_tokens_user ON email_tokens(user_id, kind);
    CREATE TABLE mail_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_until REAL,
        sent_at REAL,
        gave_up_at REAL,
        last_error TEXT
    );
    CREATE INDEX mail_outbox_due ON mail_outbox(next_attempt_at) WHERE sent_at IS NULL AND gave_up_at IS NULL
"""

RevokeWhere = Callable[..., list[str]]


def void_pending(db: sqlite3.Connection, user_id: str, now: float) -> None:
    """Voids what a user's old password or enabled state vouched for: unused email tokens, pending
    mfa_tokens and WebAuthn challenges (a new password, a disabled user or a takeover end them)."""
    db.execute("UPDATE email_tokens SET used_at = ? WHERE user_id = ? AND used_at IS NULL", (now, user_id))
    db.execute("DELETE FROM mfa_challenges WHERE user_id = ?", (user_id,))


def _insert_token(db: sqlite3.Connection, user_id: str, token: EmailToken, now: float) -> None:
    db.execute(
        "UPDATE email_tokens SET used_at = ? WHERE user_id = ? AND kind = ? AND used_at IS NULL", (now, user_id, token.kind)
    )
    db.execute(
        "INSERT INTO email_tokens (token_hash, user_id, kind, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (token.token_hash, user_id, token.kind, now, token.expires_at),
    )


def _insert_mail(db: sqlite3.Connection, mail: NewMail, now: float) -> None:
    db.execute(
        "INSERT INTO mail_outbox (sender, recipient, message, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
        (mail.sender, mail.recipient, mail.message, now, now),
    )


class SqliteAccounts:
    """Accounts and outbox operations; `SqliteStore` supplies `_do` and `_revoke`."""

    _do: Callable[..., Any]
    _revoke: RevokeWhere

    async def signup_user(
        self, *, user_id: str, email: str, email_key: str, password_hash: str, now: float, token: EmailToken, mail: NewMail
    ) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            try:
                db.execute(
                    "INSERT INTO users (id, email, email_key, password_hash, disabled, created_at, updated_at,"
                    " email_verified) VALUES (?, ?, ?, ?, 0, ?, ?, 0)",
                    (user_id, email, email_key, password_hash, now, now),
                )
            except sqlite3.IntegrityError:
                return False
            _insert_token(db, user_id, token, now)
            _insert_mail(db, mail, now)
            return True

        result: bool = await self._do(op, write=True)
        return result

    async def issue_email_token(self, user_id: str, *, token: EmailToken, mail: NewMail, now: float) -> None:
        def op(db: sqlite3.Connection) -> None:
            _insert_token(db, user_id, token, now)
            _insert_mail(db, mail, now)

        await self._do(op, write=True)

    async def redeem_email_token(
        self, token_hash: str, *, kind: str, now: float, password_hash: str | None = None
    ) -> tuple[str, list[str]] | None:
        def op(db: sqlite3.Connection) -> tuple[str, list[str]] | None:
            row = db.execute(
                "UPDATE email_tokens SET used_at = ? WHERE token_hash = ? AND kind = ? AND used_at IS NULL"
                " AND expires_at > ? RETURNING user_id",
                (now, token_hash, kind, now),
            ).fetchone()
            if row is None:
                return None
            user_id = row[0]
            user = db.execute("SELECT disabled FROM users WHERE id = ?", (user_id,)).fetchone()
            if user is None or user[0]:
                return None
            db.execute("UPDATE users SET email_verified = 1, updated_at = ? WHERE id = ?", (now, user_id))
            if password_hash is None:
                return user_id, []
            db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
            void_pending(db, user_id, now)
            return user_id, self._revoke(db, "user_id = ?", (user_id,), now=now, reason="password_reset")

        result: tuple[str, list[str]] | None = await self._do(op, write=True)
        return result

    async def set_email_verified(self, user_id: str, *, now: float) -> None:
        await self._do(
            lambda db: db.execute("UPDATE users SET email_verified = 1, updated_at = ? WHERE id = ?", (now, user_id)),
            write=True,
        )

    async def take_over_unverified(self, user_id: str, *, password_hash: str, now: float) -> list[str] | None:
        def op(db: sqlite3.Connection) -> list[str] | None:
            # Only while still unverified: of a takeover and a verification racing, one wins.
            taken = db.execute(
                "UPDATE users SET password_hash = ?, email_verified = 1, updated_at = ? WHERE id = ? AND email_verified = 0",
                (password_hash, now, user_id),
            ).rowcount
            if not taken:
                return None
            void_pending(db, user_id, now)
            for table in ("mfa_totp", "mfa_recovery_codes", "passkeys"):
                db.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            return self._revoke(db, "user_id = ?", (user_id,), now=now, reason="account_taken_over")

        result: list[str] | None = await self._do(op, write=True)
        return result

    async def is_email_verified(self, user_id: str) -> bool:
        rows = await self._do(
            lambda db: db.execute("SELECT email_verified FROM users WHERE id = ?", (user_id,)).fetchall(), write=False
        )
        return bool(rows and rows[0][0])

    async def unverified_user_ids(self) -> set[str]:
        rows = await self._do(lambda db: db.execute("SELECT id FROM users WHERE email_verified = 0").fetchall(), write=False)
        return {r[0] for r in rows}

    async def change_password(self, user_id: str, *, password_hash: str, now: float, keep_session_id: str) -> list[str]:
        def op(db: sqlite3.Connection) -> list[str]:
            db.execute("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?", (password_hash, now, user_id))
            void_pending(db, user_id, now)
            return self._revoke(
                db, "user_id = ? AND id <> ?", (user_id, keep_session_id), now=now, reason="password_changed"
            )

        result: list[str] = await self._do(op, write=True)
        return result

    async def enqueue_mail(self, mail: NewMail, *, now: float) -> None:
        await self._do(lambda db: _insert_mail(db, mail, now), write=True)

    async def claim_mail(self, *, now: float, lease_s: float, limit: int) -> list[OutboxMail]:
        # Every sender polls each second: look with a read first, so an idle outbox never takes the
        # file's write lock from the processes that share it.
        due = await self._do(
            lambda db: db.execute(
                "SELECT 1 FROM mail_outbox WHERE sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?) LIMIT 1",
                (now, now),
            ).fetchall(),
            write=False,
        )
        if not due:
            return []

        def op(db: sqlite3.Connection) -> list[OutboxMail]:
            rows = db.execute(
                "UPDATE mail_outbox SET lease_until = ?, attempts = attempts + 1 WHERE id IN ("
                " SELECT id FROM mail_outbox WHERE sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY id LIMIT ?)"
                " RETURNING id, sender, recipient, message, attempts",
                (now + lease_s, now, now, limit),
            ).fetchall()
            return sorted((OutboxMail(*r) for r in rows), key=lambda m: m.id)

        result: list[OutboxMail] = await self._do(op, write=True)
        return result

    async def mail_sent(self, mail_id: int, *, now: float) -> None:
        await self._do(
            lambda db: db.execute(
                "UPDATE mail_outbox SET sent_at = ?, lease_until = NULL, message = '', last_error = NULL WHERE id = ?",
                (now, mail_id),
            ),
            write=True,
        )

    async def mail_failed(self, mail_id: int, *, now: float, retry_at: float | None, error: str) -> None:
        if retry_at is None:
            sql = "UPDATE mail_outbox SET gave_up_at = ?, lease_until = NULL, message = '', last_error = ? WHERE id = ?"
            params: tuple[Any, ...] = (now, error[:500], mail_id)
        else:
            sql = "UPDATE mail_outbox SET next_attempt_at = ?, lease_until = NULL, last_error = ? WHERE id = ?"
            params = (retry_at, error[:500], mail_id)
        await self._do(lambda db: db.execute(sql, params), write=True)
