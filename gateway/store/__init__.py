"""The storage port: records, the `Store` protocol every backend implements, and `open_store(cfg)`.

Must not: import aiohttp or a database driver (backends are imported lazily by `open_store` only),
or hold a token in plaintext (the store sees refresh-token hashes only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.config import StoreConfig

__all__ = [
    "AccessChange",
    "Admit",
    "RevocationEvent",
    "RotateOutcome",
    "SessionRecord",
    "Store",
    "UserRecord",
    "open_store",
]


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user; `email` is as entered (trimmed), `email_key` the normalized unique form."""

    id: str
    email: str
    email_key: str
    password_hash: str
    disabled: bool
    created_at: float
    # Authorization: the user's roles (sorted, unique) and how often they changed; the version goes
    # into access tokens as `rv`, so a token from before a change can be told apart exactly.
    roles: tuple[str, ...] = ()
    roles_version: int = 0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One login (a refresh-token family). Times are epoch seconds."""

    id: str
    user_id: str
    created_at: float
    last_used_at: float
    expires_at: float
    absolute_expires_at: float
    remember_me: bool
    user_agent: str
    ip: str
    revoked_at: float | None = None
    revoked_reason: str | None = None
    # How the session was authenticated (RFC 8176 values, e.g. ("pwd",), ("pwd", "otp", "mfa"), ("fed",))
    # and the identity provider that started it ("" for a local login); both go into its access tokens.
    amr: tuple[str, ...] = ("pwd",)
    idp: str = ""


# Called with the session id of a known token before `rotate` changes anything; returns 0 to go on,
# else the whole seconds the caller must wait. Backends may call it on their own thread (see rotate).
Admit = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class RotateOutcome:
    """What presenting a refresh token did.

    `rotated`: the token was current and is now dead; `twin`: it was rotated within the grace window
    and its successor is still current, so the caller answers with that same successor; `reused`: an
    old token came back, the session is now revoked; `invalid`: unknown, expired, revoked or disabled;
    `limited`: `admit` refused the session (nothing changed), wait `retry_after` seconds.
    """

    kind: Literal["rotated", "twin", "reused", "invalid", "limited"]
    session: SessionRecord | None = None
    user: UserRecord | None = None
    reason: str = ""
    retry_after: int = 0


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    """A revoked session as seen in the store's revocation log."""

    seq: int
    session_id: str
    revoked_at: float


@dataclass(frozen=True, slots=True)
class AccessChange:
    """An entry of the store's ordered log of grant changes: access tokens of `subject` (a user or
    machine-client id) whose `rv` is below `version` are no longer good (roles changed, client removed)."""

    seq: int
    subject: str
    version: int
    changed_at: float


class Store(Protocol):
    """Users, sessions with their refresh-token hashes, and an ordered log of revocations."""

    async def create_user(self, *, user_id: str, email: str, email_key: str, password_hash: str, now: float) -> UserRecord:
        """Adds a user; raises Conflict when `email_key` exists."""

    async def get_user(self, *, email_key: str | None = None, user_id: str | None = None) -> UserRecord | None:
        """One user by normalized email or by id."""

    async def list_users(self) -> list[UserRecord]:
        """Every user, oldest first."""

    async def update_user(
        self, user_id: str, *, now: float, password_hash: str | None = None, disabled: bool | None = None
    ) -> list[str]:
        """Changes a user and revokes every live session of theirs; returns the revoked session ids."""

    async def create_session(self, session: SessionRecord, *, token_hash: str) -> None:
        """Stores a new session and its first refresh-token hash."""

    async def rotate(
        self,
        *,
        token_hash: str,
        successor_hash: str,
        now: float,
        grace_s: float,
        remember_ttl_s: float,
        session_ttl_s: float,
        admit: Admit | None = None,
    ) -> RotateOutcome:
        """Atomically rotates `token_hash` to `successor_hash` (see RotateOutcome for the cases).

        When the token is known (in any state), `admit(session_id)` is called exactly once, inside the
        operation and before any other check or change; a non-zero answer ends it as `limited`. It may
        run on a backend's own thread, one call at a time, so it must not touch the event loop.
        """

    async def find_session(self, *, token_hash: str | None = None, session_id: str | None = None) -> SessionRecord | None:
        """A session by any of its refresh-token hashes or by id, revoked or not."""

    async def list_sessions(self, user_id: str, *, now: float) -> list[SessionRecord]:
        """The user's live sessions, newest first."""

    async def revoke(
        self, *, now: float, reason: str, session_id: str | None = None, user_id: str | None = None
    ) -> list[str]:
        """Revokes one session or all of a user's; returns the ids that were live and are now revoked."""

    async def count_live_sessions(self, *, now: float) -> int:
        """How many sessions are neither revoked nor expired."""

    async def revocations_since(self, seq: int, *, not_before: float = 0.0) -> list[RevocationEvent]:
        """Revocation log entries after `seq` (and at or after `not_before`), in order."""

    async def prune(self, *, now: float, revocations_before: float) -> int:
        """Deletes sessions past their absolute expiry and older revocation entries; returns the sessions deleted."""

    # -- federated login: identities linked by (provider, subject), and the sessions they started --

    async def link_identity(self, *, provider: str, subject: str, user_id: str, now: float) -> None:
        """Links the provider's `sub` to a user; raises Conflict when (provider, subject) is already linked."""

    async def find_identity(self, *, provider: str, subject: str) -> str | None:
        """The id of the user linked to (provider, subject)."""

    async def record_federated_session(self, *, session_id: str, provider: str, subject: str, sid: str) -> None:
        """Remembers which provider login (its `sub` and session `sid`) started a session."""

    async def federated_sessions(
        self, *, provider: str, subject: str | None = None, sid: str | None = None, created_before: float, now: float
    ) -> list[str]:
        """Live sessions started by that provider for `subject` and/or `sid` (both given: both must match),
        created at or before `created_before`."""

    # -- authorization: roles and the log of grant changes --------------------------------------

    async def set_user_roles(self, user_id: str, roles: tuple[str, ...], *, now: float) -> UserRecord | None:
        """Replaces the user's roles (None for an unknown user). A different set bumps `roles_version`
        and appends (user_id, new version) to the grant-change log, in one transaction."""

    async def access_changes_since(self, seq: int, *, not_before: float = 0.0) -> list[AccessChange]:
        """Grant-change log entries after `seq` (and at or after `not_before`), in order."""

    async def ping(self) -> None:
        """Raises StoreUnavailable when the store cannot answer."""

    async def aclose(self) -> None:
        """Releases connections."""


async def open_store(cfg: StoreConfig) -> Store:
    """Connects the backend that the URL names and applies pending migrations."""
    if cfg.sqlite_path is not None:
        from gateway.store.sqlite import SqliteStore

        return await SqliteStore.open(cfg.sqlite_path)
    from gateway.store.postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]

    return await PostgresStore.open(cfg.url)  # type: ignore[no-any-return,unused-ignore]
