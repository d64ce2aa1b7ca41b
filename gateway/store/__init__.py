"""The storage port: records, the `Store` protocol every backend implements, and `open_store(cfg)`.

Must not: import aiohttp or a database driver (backends are imported lazily by `open_store` only),
or hold a token in plaintext (the store sees refresh-token hashes only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.config import Rate, StoreConfig

__all__ = [
    "AccessChange",
    "ClientRecord",
    "GCRA_SLACK",
    "EmailToken",
    "NewMail",
    "OutboxMail",
    "ChallengeRecord",
    "MfaStore",
    "PasskeyRecord",
    "RevocationEvent",
    "RotateOutcome",
    "SessionRecord",
    "Store",
    "TotpRecord",
    "UserRecord",
    "gcra_interval",
    "gcra_wait",
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


# -- shared rate limits (issue 12) ----------------------------------------------------------------
# Every backend counts limits with GCRA (the generic cell rate algorithm) on one row per key holding
# the "theoretical arrival time" `tat`: a hit at `now` is allowed when max(tat, now) + interval - now
# <= period, and then moves tat by one interval. That is one upsert statement per key, so a check is
# one round trip and every process sharing the store sees the same count. `count` hits may come at
# once; after that one per `period / count` (a rate, as `10/minute` reads, with a burst of `count`).
# Float slack, so that `count` hits at one instant are not refused by a rounding error.
GCRA_SLACK = 1e-6


def gcra_interval(rate: Rate) -> float:
    """Seconds one hit takes out of the allowance."""
    return rate.period_s / rate.count


def gcra_wait(tat: float, *, rate: Rate, now: float) -> int:
    """Whole seconds until a refused key (row time `tat`) allows one more hit; at least 1."""
    return max(1, math.ceil(max(tat, now) + gcra_interval(rate) - rate.period_s - now))


@dataclass(frozen=True, slots=True)
class RotateOutcome:
    """What presenting a refresh token did.

    `rotated`: the token was current and is now dead; `twin`: it was rotated within the grace window
    and its successor is still current, so the caller answers with that same successor; `reused`: an
    old token came back, the session is now revoked; `invalid`: unknown, expired, revoked or disabled;
    `limited`: the session's refresh limit refused it (nothing changed), wait `retry_after` seconds.
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


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """A machine client (OAuth 2.0 client credentials): its secret only as a hash, its granted scopes."""

    id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    created_at: float
# -- accounts and the mail outbox (issue 12) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailToken:
    """A verification or reset token to store: only its hash, its kind and when it expires."""

    token_hash: str
    kind: Literal["verify", "reset"]
    expires_at: float


@dataclass(frozen=True, slots=True)
class NewMail:
    """A rendered mail for the outbox: envelope sender and recipient, and the whole RFC 5322 text."""

    sender: str
    recipient: str
    message: str


@dataclass(frozen=True, slots=True)
class OutboxMail:
    """A mail claimed from the outbox; `attempts` counts this one."""

    id: int
    sender: str
    recipient: str
    message: str
    attempts: int


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
        """Changes a user; a new password or disabling also revokes every live session of theirs and
        voids their unused email tokens and pending challenges (mfa_tokens). Returns the revoked ids."""

    async def rehash_password(self, user_id: str, *, old_hash: str, new_hash: str, now: float) -> bool:
        """Replaces the password hash with a re-hash of the same password, only while it is still
        `old_hash`; revokes and voids nothing (the password is unchanged). False if it changed."""

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
        limit: Rate | None = None,
    ) -> RotateOutcome:
        """Atomically rotates `token_hash` to `successor_hash` (see RotateOutcome for the cases).

        With `limit`, a known token (in any state) takes one hit from the limit of key
        `refresh:<session id>` inside the same operation, before any other check or change; a refusal
        ends it as `limited`. So a limited refresh is still one store call.
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

    # -- machine clients -----------------------------------------------------------------------

    async def create_client(self, client: ClientRecord) -> None:
        """Stores a new machine client; raises Conflict when the id exists."""

    async def get_client(self, client_id: str) -> ClientRecord | None:
        """One machine client by id."""

    async def list_clients(self) -> list[ClientRecord]:
        """Every machine client, oldest first."""

    async def remove_client(self, client_id: str, *, now: float, version: int) -> bool:
        """Deletes a client and logs (client_id, version) in the grant-change log, in one transaction;
        False when there was no such client."""
    # -- shared rate limits (issue 12) ------------------------------------------------------------

    async def take_limit(self, keys: Sequence[str], *, rate: Rate, now: float) -> int:
        """One hit on each (distinct) key if every one of them allows it, else none; 0 or the seconds to wait."""

    async def give_back_limit(self, keys: Sequence[str], *, rate: Rate) -> None:
        """Returns one hit to each key (a reserved attempt that turned out not to count)."""

    # -- accounts and the mail outbox (issue 12) ---------------------------------------------------

    async def signup_user(
        self, *, user_id: str, email: str, email_key: str, password_hash: str, now: float, token: EmailToken, mail: NewMail
    ) -> bool:
        """Creates an unverified user with its first verification token and mail, atomically; False
        (nothing written) when `email_key` exists."""

    async def issue_email_token(self, user_id: str, *, token: EmailToken, mail: NewMail, now: float) -> None:
        """Voids the user's unused tokens of `token.kind`, stores this one and queues its mail, atomically."""

    async def redeem_email_token(
        self, token_hash: str, *, kind: str, now: float, password_hash: str | None = None
    ) -> tuple[str, list[str]] | None:
        """Uses up a live token of `kind` of an enabled user: marks the address verified and, with
        `password_hash` (a reset), sets it, voids the user's other email tokens and challenges and
        revokes every session. Returns (user id, revoked
        session ids), or None when the token is unknown, used, voided, expired or its user disabled."""

    async def set_email_verified(self, user_id: str, *, now: float) -> None:
        """Marks the user's address verified (`gateway users verify`)."""

    async def take_over_unverified(self, user_id: str, *, password_hash: str, now: float) -> list[str] | None:
        """A federated login that proved the address takes over an account that never verified it:
        sets `password_hash`, marks it verified, removes every second factor, voids its email tokens
        and challenges and revokes its sessions, atomically. The revoked ids; None (nothing written)
        when the address is verified by now."""

    async def is_email_verified(self, user_id: str) -> bool:
        """Whether the user's address is verified (False for an unknown id)."""

    async def unverified_user_ids(self) -> set[str]:
        """Ids of users whose address is not verified (users made by sign-up, until they verify)."""

    async def change_password(self, user_id: str, *, password_hash: str, now: float, keep_session_id: str) -> list[str]:
        """Sets a new password, voids the user's email tokens and challenges, and revokes every live
        session of the user but `keep_session_id`."""

    async def enqueue_mail(self, mail: NewMail, *, now: float) -> None:
        """Queues a mail for the sender task."""

    async def claim_mail(self, *, now: float, lease_s: float, limit: int) -> list[OutboxMail]:
        """Atomically leases up to `limit` due, unsent mails (their lease expired or never taken), so
        each is handed to one sender at a time across every process; counts an attempt on each."""

    async def mail_sent(self, mail_id: int, *, now: float) -> None:
        """Marks a mail delivered and drops its text (it holds a token)."""

    async def mail_failed(self, mail_id: int, *, now: float, retry_at: float | None, error: str) -> None:
        """Ends the lease after a failed attempt: retried from `retry_at`, or never again when None."""

    async def challenge_claim(self, challenge: ChallengeRecord, *, now: float) -> bool:
        """Stores a challenge unless a live one has its key: False then (a value already used once,
        such as a login callback or a logout token's jti). Drops every expired one."""

    async def ping(self) -> None:
        """Raises StoreUnavailable when the store cannot answer."""

    async def aclose(self) -> None:
        """Releases connections."""


# -- second factors (gateway/mfa) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TotpRecord:
    """A user's TOTP factor; `secret` is ciphertext the store never reads, `last_step` the newest accepted step."""

    user_id: str
    secret: str
    confirmed: bool
    last_step: int
    created_at: float


@dataclass(frozen=True, slots=True)
class ChallengeRecord:
    """A short-lived, single-use value (an mfa_token, a WebAuthn challenge), kept only as a hash."""

    key_hash: str
    kind: str
    user_id: str | None
    payload: str
    expires_at: float
    tries: int = 0


@dataclass(frozen=True, slots=True)
class PasskeyRecord:
    """A registered WebAuthn credential; ids and the COSE public key are base64url text."""

    id: str
    user_id: str
    credential_id: str
    public_key: str
    sign_count: int
    name: str
    transports: tuple[str, ...]
    created_at: float
    last_used_at: float | None = None


class MfaStore(Protocol):
    """The second-factor part of a backend: TOTP, recovery codes, challenges, passkeys. Each method is atomic."""

    async def totp_begin(self, user_id: str, *, secret: str, now: float) -> bool:
        """Stores a pending (unconfirmed) secret, replacing a pending one; False when a confirmed one exists."""

    async def totp_get(self, user_id: str) -> TotpRecord | None:
        """The user's TOTP factor, pending or confirmed."""

    async def totp_confirm(self, user_id: str, *, step: int, recovery_hashes: list[str], now: float) -> bool:
        """Turns a pending factor on at time step `step` and sets the recovery codes; False if none was pending."""

    async def totp_accept_step(self, user_id: str, *, step: int) -> bool:
        """Records `step` as used if the factor is on and `step` is newer than any accepted one (codes work once)."""

    async def totp_delete(self, user_id: str) -> bool:
        """Removes the TOTP factor and the recovery codes; False when there was none."""

    async def recovery_replace(self, user_id: str, *, hashes: list[str], now: float) -> None:
        """Replaces every recovery code of the user with these hashes."""

    async def recovery_use(self, user_id: str, *, code_hash: str, now: float) -> bool:
        """Marks one unused code used; False when it is unknown or already used (each code works once)."""

    async def recovery_count(self, user_id: str) -> int:
        """How many unused recovery codes the user has."""

    async def challenge_put(self, challenge: ChallengeRecord, *, now: float) -> None:
        """Stores a challenge (and drops every expired one)."""

    async def challenge_try(self, key_hash: str, *, kind: str, now: float, max_tries: int) -> ChallengeRecord | None:
        """Counts one try; the record with its new count, or None when unknown, expired or out of tries."""

    async def challenge_take(self, key_hash: str, *, kind: str, now: float) -> ChallengeRecord | None:
        """Deletes and returns a live challenge: of concurrent takers exactly one gets it."""

    async def passkey_add(self, passkey: PasskeyRecord) -> None:
        """Stores a credential; Conflict when its credential id is registered already."""

    async def passkey_list(self, user_id: str) -> list[PasskeyRecord]:
        """The user's passkeys, oldest first."""

    async def passkey_find(self, credential_id: str) -> PasskeyRecord | None:
        """A passkey by its WebAuthn credential id."""

    async def passkey_used(self, passkey_id: str, *, old_count: int, new_count: int, now: float) -> bool:
        """Moves the sign count from `old_count` to `new_count`; False if another login moved it first."""

    async def passkey_delete(self, user_id: str, passkey_id: str) -> bool:
        """Deletes one of the user's passkeys; False when it is not theirs."""

    async def mfa_reset(self, user_id: str, *, now: float) -> list[str]:
        """Removes every second factor and challenge of the user and revokes their sessions; returns the revoked ids."""


async def open_store(cfg: StoreConfig) -> Store:
    """Connects the backend that the URL names and applies pending migrations."""
    if cfg.sqlite_path is not None:
        from gateway.store.sqlite import SqliteStore

        return await SqliteStore.open(cfg.sqlite_path)
    from gateway.store.postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]

    return await PostgresStore.open(cfg.url)  # type: ignore[no-any-return,unused-ignore]
