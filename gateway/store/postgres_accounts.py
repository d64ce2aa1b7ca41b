"""The PostgreSQL side of self-service accounts: verification state, email tokens and the mail outbox.

A mixin of `PostgresStore`. Mails are claimed with `FOR UPDATE SKIP LOCKED` inside one UPDATE, so
senders on any number of instances each lease different rows and none waits on another.

Must not: import aiohttp, tokens or another backend; hold a token in plaintext (only the outbox's
mail text does, until it is sent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from gateway.core.errors import StoreUnavailable
from gateway.store import EmailToken, NewMail, OutboxMail

__all__ = ["ACCOUNTS_MIGRATION", "PostgresAccounts", "void_pending"]

# Existing users (made by `gateway users add`) default to verified; sign-up inserts FALSE.
ACCOUNTS_MIGRATION = """
    ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT TRUE;
    CREATE TABLE email_tokens (
        token_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION
    );
    CREATE INDEX email_tokens_user ON email_tokens(user_id, kind);
    CREATE TABLE mail_outbox (
        id BIGSERIAL PRIMARY KEY,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION,
        sent_at DOUBLE PRECISION,
        gave_up_at DOUBLE PRECISION,
        last_error TEXT
    );
    CREATE INDEX mail_outbox_due ON mail_outbox(next_attempt_at) WHERE sent_at IS NULL AND gave_up_at IS NULL;
"""

_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def void_pending(conn: Any, user_id: str, now: float) -> None:
    """Voids what a user's old password or enabled state vouched for: unused email tokens, pending
    mfa_tokens and WebAuthn challenges (a new password, a disabled user or a takeover end them)."""
    await conn.execute("UPDATE email_tokens SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL", now, user_id)
    await conn.execute("DELETE FROM mfa_challenges WHERE user_id = $1", user_id)


async def _insert_token(conn: asyncpg.Connection, user_id: str, token: EmailToken, now: float) -> None:
    await conn.execute(
        "UPDATE email_tokens SET used_at = $1 WHERE user_id = $2 AND kind = $3 AND used_at IS NULL", now, user_id, token.kind
    )
    await conn.execute(
        "INSERT INTO email_tokens (token_hash, user_id, kind, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        token.token_hash, user_id, token.kind, now, token.expires_at,
    )  # fmt: skip


async def _insert_mail(conn: Any, mail: NewMail, now: float) -> None:
    await conn.execute(
        "INSERT INTO mail_outbox (sender, recipient, message, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $4)",
        mail.sender, mail.recipient, mail.message, now,
    )  # fmt: skip


class PostgresAccounts:
    """Accounts and outbox operations; `PostgresStore` supplies `_pool` and `_revoke`."""

    _pool: asyncpg.Pool
    _revoke: Callable[..., Awaitable[list[str]]]

    async def signup_user(
        self, *, user_id: str, email: str, email_key: str, password_hash: str, now: float, token: EmailToken, mail: NewMail
    ) -> bool:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                created = await conn.fetchval(
                    "INSERT INTO users (id, email, email_key, password_hash, disabled, created_at, updated_at,"
                    " email_verified) VALUES ($1, $2, $3, $4, FALSE, $5, $5, FALSE)"
                    " ON CONFLICT (email_key) DO NOTHING RETURNING TRUE",
                    user_id, email, email_key, password_hash, now,
                )  # fmt: skip
                if not created:
                    return False
                await _insert_token(conn, user_id, token, now)
                await _insert_mail(conn, mail, now)
                return True
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def issue_email_token(self, user_id: str, *, token: EmailToken, mail: NewMail, now: float) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await _insert_token(conn, user_id, token, now)
                await _insert_mail(conn, mail, now)
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def redeem_email_token(
        self, token_hash: str, *, kind: str, now: float, password_hash: str | None = None
    ) -> tuple[str, list[str]] | None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # The UPDATE takes the row lock, so of two concurrent redemptions only one sees it unused.
                user_id = await conn.fetchval(
                    "UPDATE email_tokens SET used_at = $1 WHERE token_hash = $2 AND kind = $3 AND used_at IS NULL"
                    " AND expires_at > $1 RETURNING user_id",
                    now, token_hash, kind,
                )  # fmt: skip
                if user_id is None:
                    return None
                if await conn.fetchval("SELECT disabled FROM users WHERE id = $1 FOR UPDATE", user_id) is not False:
                    return None
                await conn.execute("UPDATE users SET email_verified = TRUE, updated_at = $1 WHERE id = $2", now, user_id)
                if password_hash is None:
                    return user_id, []
                await conn.execute("UPDATE users SET password_hash = $1 WHERE id = $2", password_hash, user_id)
                await void_pending(conn, user_id, now)
                return user_id, await self._revoke(conn, "user_id = $3", user_id, now=now, reason="password_reset")
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def take_over_unverified(self, user_id: str, *, password_hash: str, now: float) -> list[str] | None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # Only while still unverified: of a takeover and a verification racing, one wins.
                taken = await conn.fetchval(
                    "UPDATE users SET password_hash = $1, email_verified = TRUE, updated_at = $2"
                    " WHERE id = $3 AND NOT email_verified RETURNING id",
                    password_hash, now, user_id,
                )  # fmt: skip
                if taken is None:
                    return None
                await void_pending(conn, user_id, now)
                for table in ("mfa_totp", "mfa_recovery_codes", "passkeys"):
                    await conn.execute(f"DELETE FROM {table} WHERE user_id = $1", user_id)
                revoked: list[str] = await self._revoke(conn, "user_id = $3", user_id, now=now, reason="account_taken_over")
                return revoked
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def set_email_verified(self, user_id: str, *, now: float) -> None:
        try:
            await self._pool.execute("UPDATE users SET email_verified = TRUE, updated_at = $1 WHERE id = $2", now, user_id)
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def is_email_verified(self, user_id: str) -> bool:
        try:
            return bool(await self._pool.fetchval("SELECT email_verified FROM users WHERE id = $1", user_id))
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def unverified_user_ids(self) -> set[str]:
        try:
            rows = await self._pool.fetch("SELECT id FROM users WHERE NOT email_verified")
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return {r[0] for r in rows}

    async def change_password(self, user_id: str, *, password_hash: str, now: float, keep_session_id: str) -> list[str]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3", password_hash, now, user_id
                )
                await void_pending(conn, user_id, now)
                return await self._revoke(
                    conn, "user_id = $3 AND id <> $4", user_id, keep_session_id, now=now, reason="password_changed"
                )
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def enqueue_mail(self, mail: NewMail, *, now: float) -> None:
        try:
            await _insert_mail(self._pool, mail, now)
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def claim_mail(self, *, now: float, lease_s: float, limit: int) -> list[OutboxMail]:
        try:
            rows = await self._pool.fetch(
                "UPDATE mail_outbox SET lease_until = $1, attempts = attempts + 1 WHERE id IN ("
                " SELECT id FROM mail_outbox WHERE sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $2"
                " AND (lease_until IS NULL OR lease_until <= $2) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, sender, recipient, message, attempts",
                now + lease_s, now, limit,
            )  # fmt: skip
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
        return sorted((OutboxMail(*r) for r in rows), key=lambda m: m.id)

    async def mail_sent(self, mail_id: int, *, now: float) -> None:
        try:
            await self._pool.execute(
                "UPDATE mail_outbox SET sent_at = $1, lease_until = NULL, message = '', last_error = NULL WHERE id = $2",
                now, mail_id,
            )  # fmt: skip
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc

    async def mail_failed(self, mail_id: int, *, now: float, retry_at: float | None, error: str) -> None:
        try:
            if retry_at is None:
                await self._pool.execute(
                    "UPDATE mail_outbox SET gave_up_at = $1, lease_until = NULL, message = '', last_error = $2 WHERE id = $3",
                    now, error[:500], mail_id,
                )  # fmt: skip
            else:
                await self._pool.execute(
                    "UPDATE mail_outbox SET next_attempt_at = $1, lease_until = NULL, last_error = $2 WHERE id = $3",
                    retry_at, error[:500], mail_id,
                )  # fmt: skip
        except _ERRORS as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
