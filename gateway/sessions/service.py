"""Users, login, refresh-token rotation with reuse detection, logout and revocation, on a `Store`.

Must not: import aiohttp or know about cookies and headers; it takes and returns plain values and
calls `on_revoke` with every session id it revokes so that the caller can cut access at once.
"""

from __future__ import annotations

import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email

from gateway.config import Config, LimitsConfig
from gateway.core.errors import (
    BadRequest,
    EmailNotVerified,
    InvalidCredentials,
    NoRoute,
    RateLimited,
    RefreshRejected,
    RefreshReused,
)
from gateway.core.log import audit
from gateway.sessions.passwords import Passwords
from gateway.store import SessionRecord, Store, UserRecord
from gateway.tokens.keyring import KeyRing, hash_refresh_token, new_refresh_token

__all__ = ["Issued", "SessionService", "check_password", "normalize_email"]

_MIN_PASSWORD, _MAX_PASSWORD = 8, 1024


def normalize_email(raw: object) -> tuple[str, str]:
    """(the one address this names, its unique key); BadRequest for anything that is not one address.

    email-validator parses it (syntax only, no DNS): a comma, a second `@`, quotes, comments, a
    display name or a trailing dot are refused rather than read two ways, so the address a mail is
    sent to is the address policy reads. Its domain comes back lower-cased and IDNA-normalised.
    """
    if not isinstance(raw, str):
        raise BadRequest("email must be a string")
    email = raw.strip()
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in email):
        raise BadRequest("email must not contain spaces or control characters")
    try:
        # test_environment: a `.test` domain is a name like any other here (the tests and many
        # staging set-ups use one); the library's other reserved names (localhost, invalid, local,
        # onion, arpa) stay refused.
        parsed = validate_email(email, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise BadRequest(f"email is not a valid address ({exc})") from None
    shown = parsed.normalized
    # NFKC folds compatibility forms (fullwidth letters, ligatures) so look-alike spellings of one
    # address cannot become two accounts; casefold makes the comparison case-insensitive.
    return shown, unicodedata.normalize("NFKC", shown).casefold()


def check_password(password: object) -> str:
    """The password if it is a string of 8 to 1024 characters; else BadRequest."""
    if not isinstance(password, str):
        raise BadRequest("password must be a string")
    if not _MIN_PASSWORD <= len(password) <= _MAX_PASSWORD:
        raise BadRequest(f"password must be {_MIN_PASSWORD} to {_MAX_PASSWORD} characters")
    return password


@dataclass(frozen=True, slots=True)
class Issued:
    """Tokens handed out by a login or a refresh."""

    access_token: str
    expires_in: int
    refresh_token: str
    session: SessionRecord
    user: UserRecord
    refresh_max_age: int | None  # None: a browser-session cookie (no remember_me)


class SessionService:
    """The session rules; `clock` returns epoch seconds and is injectable for tests."""

    def __init__(
        self,
        *,
        store: Store,
        keys: KeyRing,
        config: Config,
        on_revoke: Callable[[list[str]], None] = lambda ids: None,
        on_event: Callable[[str, str], None] = lambda event, reason: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = keys
        self.cfg = config.tokens
        self.on_revoke = on_revoke
        self.on_event = on_event
        self.clock = clock
        self._passwords = Passwords()
        self.require_verified_email = config.accounts.require_verified_email
        self.set_limits(config.limits)

    def set_limits(self, limits: LimitsConfig) -> None:
        """(Re)applies `[limits]`; the counts live in the store and carry over a change of rate."""
        self.limits = limits

    # -- users ---------------------------------------------------------------------------------

    async def hash_password(self, password: str) -> str:
        """An argon2id hash, computed on the password threads (not the event loop's)."""
        return await self._passwords.hash(check_password(password))

    async def add_user(self, email: str, password: str) -> UserRecord:
        """Creates a user; Conflict if the email exists."""
        shown, key = normalize_email(email)
        pw_hash = await self.hash_password(password)
        user = await self.store.create_user(user_id=str(uuid.uuid4()), email=shown, email_key=key, password_hash=pw_hash, now=self.clock())
        self._audit("user_created", user_id=user.id)
        return user

    async def check_password_of(self, user: UserRecord, password: str) -> bool:
        """Whether `password` is the user's (accounts: a password change checks the current one)."""
        return await self._passwords.verify(user.password_hash, password)

    async def get_user(self, email: str) -> UserRecord:
        """The user with this email; NoRoute if there is none."""
        _, key = normalize_email(email)
        user = await self.store.get_user(email_key=key)
        if user is None:
            raise NoRoute(f"no user with email {email.strip()}")
        return user

    async def set_password(self, email: str, password: str) -> list[str]:
        """Sets a new password and revokes every session of the user."""
        user = await self.get_user(email)
        pw_hash = await self.hash_password(password)
        revoked = await self.store.update_user(user.id, now=self.clock(), password_hash=pw_hash)
        self._revoked(revoked, user_id=user.id, reason="password_changed")
        return revoked

    async def set_disabled(self, email: str, *, disabled: bool) -> list[str]:
        """Disables (revoking every session) or enables a user."""
        user = await self.get_user(email)
        revoked = await self.store.update_user(user.id, now=self.clock(), disabled=disabled)
        self._audit("user_disabled" if disabled else "user_enabled", user_id=user.id)
        self._revoked(revoked, user_id=user.id, reason="user_disabled")
        return revoked

    # -- login and refresh ---------------------------------------------------------------------

    async def login(self, email: object, password: object, *, remember_me: bool, user_agent: str, ip: str) -> Issued:
        """Checks the password and opens a session; one answer for every kind of failure."""
        user = await self.check_credentials(email, password, ip=ip)
        return await self.start_session(user, remember_me=remember_me, user_agent=user_agent, ip=ip)

    async def check_credentials(self, email: object, password: object, *, ip: str) -> UserRecord:
        """The user whose password this is (the first step of a login, opening no session); one answer
        for every kind of failure. A caller that needs no second step goes on with `start_session`."""
        _, key = normalize_email(email)
        if not isinstance(password, str) or not password or len(password) > _MAX_PASSWORD:
            raise BadRequest(f"password must be a string of 1 to {_MAX_PASSWORD} characters")
        now = self.clock()
        # Count the attempt as a failure before the slow password check and give it back on success:
        # recording it only after the check let a parallel burst pass the limit check all at once.
        # The count lives in the store, so every worker and instance shares it.
        rate = self.limits.login
        limit_keys = (f"login:ip:{ip}", f"login:email:{key}")
        wait = await self.store.take_limit(limit_keys, rate=rate, now=now)
        if wait:
            self._audit("login_failure", ip=ip, reason="rate_limited")
            raise RateLimited("too many failed login attempts; try again later", retry_after=wait)
        user = await self.store.get_user(email_key=key)
        ok = await self._passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok or user.disabled:
            reason = "unknown_email" if user is None else "wrong_password" if not ok else "user_disabled"
            self._audit("login_failure", user_id=user.id if user else None, ip=ip, reason=reason)
            raise InvalidCredentials("the email or password is wrong")
        await self.store.give_back_limit(limit_keys, rate=rate)
        if self._passwords.needs_rehash(user.password_hash):
            # The only moment the password is in hand: re-hash it with today's parameters. Only if
            # the hash is still the one checked, so a password change at the same moment wins.
            new_hash = await self._passwords.hash(password)
            if await self.store.rehash_password(user.id, old_hash=user.password_hash, new_hash=new_hash, now=now):
                self._audit("password_rehashed", user_id=user.id)
        # Only after the password was right, so the answer tells nothing to someone without it.
        if self.require_verified_email and not await self.store.is_email_verified(user.id):
            self._audit("login_failure", user_id=user.id, ip=ip, reason="email_not_verified")
            raise EmailNotVerified("the email address is not verified yet; follow the link in the mail")
        return user

    async def start_session(
        self,
        user: UserRecord,
        *,
        remember_me: bool,
        user_agent: str,
        ip: str,
        amr: tuple[str, ...] = ("pwd",),
        idp: str = "",
    ) -> Issued:
        """Opens a session for a user whose identity is already proven (password, second factor, passkey,
        identity provider); `amr` and `idp` say how, and go into every access token of the session."""
        now = self.clock()
        ttl = self.cfg.refresh_ttl if remember_me else self.cfg.session_ttl
        absolute = now + self.cfg.absolute_ttl.total_seconds()
        session = SessionRecord(
            id=str(uuid.uuid4()),
            user_id=user.id,
            created_at=now,
            last_used_at=now,
            expires_at=min(now + ttl.total_seconds(), absolute),
            absolute_expires_at=absolute,
            remember_me=remember_me,
            user_agent=user_agent[:256],
            ip=ip,
            amr=amr,
            idp=idp,
        )
        refresh_token = new_refresh_token()
        await self.store.create_session(session, token_hash=hash_refresh_token(refresh_token))
        self._audit("login_success", user_id=user.id, session_id=session.id, ip=ip)
        return self._issue(session, user, refresh_token, now=now)

    async def refresh(self, refresh_token: str, *, ip: str) -> Issued:
        """Rotates the refresh token; raises RefreshRejected, RefreshReused or RateLimited."""
        token_hash = hash_refresh_token(refresh_token)
        now = self.clock()
        successor = self.keys.successor(refresh_token)
        # The store counts the per-session limit inside the rotation, before it changes anything,
        # so a refresh is one store call.
        outcome = await self.store.rotate(
            token_hash=token_hash,
            successor_hash=hash_refresh_token(successor),
            now=now,
            grace_s=self.cfg.reuse_grace.total_seconds(),
            remember_ttl_s=self.cfg.refresh_ttl.total_seconds(),
            session_ttl_s=self.cfg.session_ttl.total_seconds(),
            limit=self.limits.refresh,
        )
        session, user = outcome.session, outcome.user
        uid, sid = (user.id if user else None), (session.id if session else None)
        if outcome.kind == "limited":
            self._audit("refresh_failure", user_id=uid, session_id=sid, ip=ip, reason="rate_limited")
            raise RateLimited("too many refreshes for this session; try again later", retry_after=outcome.retry_after)
        if outcome.kind == "reused":
            self._audit("reuse_detected", user_id=uid, session_id=sid, ip=ip, reason="refresh_token_reused")
            self._revoked([sid] if sid else [], user_id=uid, reason="refresh_token_reused")
            raise RefreshReused("this refresh token was already used; the session has been revoked")
        if outcome.kind == "invalid" or session is None or user is None:
            self._audit("refresh_failure", user_id=uid, session_id=sid, ip=ip, reason=outcome.reason)
            raise RefreshRejected(f"the refresh token is invalid ({outcome.reason})")
        self._audit("refresh", user_id=uid, session_id=sid, ip=ip, reason="rotated" if outcome.kind == "rotated" else "grace_twin")
        return self._issue(session, user, successor, now=now)

    def _issue(self, session: SessionRecord, user: UserRecord, refresh_token: str, *, now: float) -> Issued:
        access, expires_in = self.keys.issue_access_token(
            sub=user.id, sid=session.id, email=user.email, now=now, not_after=session.absolute_expires_at,
            amr=session.amr, idp=session.idp, roles=user.roles, rv=user.roles_version,
        )
        max_age = max(0, int(session.expires_at - now)) if session.remember_me else None
        return Issued(
            access_token=access,
            expires_in=expires_in,
            refresh_token=refresh_token,
            session=session,
            user=user,
            refresh_max_age=max_age,
        )

    # -- logout and revocation -----------------------------------------------------------------

    async def session_for_token(self, refresh_token: str) -> SessionRecord | None:
        """The session a refresh token (current or old) belongs to."""
        return await self.store.find_session(token_hash=hash_refresh_token(refresh_token))

    async def revoke_session(self, session_id: str, *, reason: str, user_id: str | None = None, ip: str = "") -> list[str]:
        """Revokes one session; with `user_id`, NoRoute unless it is that user's."""
        if user_id is not None:
            found = await self.store.find_session(session_id=session_id)
            if found is None or found.user_id != user_id:
                raise NoRoute("no such session")
        revoked = await self.store.revoke(now=self.clock(), reason=reason, session_id=session_id)
        self._revoked(revoked, user_id=user_id, reason=reason, ip=ip)
        return revoked

    async def revoke_user(self, user_id: str, *, reason: str, ip: str = "") -> list[str]:
        """Revokes every session of a user."""
        revoked = await self.store.revoke(now=self.clock(), reason=reason, user_id=user_id)
        self._revoked(revoked, user_id=user_id, reason=reason, ip=ip)
        return revoked

    async def list_sessions(self, user_id: str) -> list[SessionRecord]:
        """The user's live sessions."""
        return await self.store.list_sessions(user_id, now=self.clock())

    def _audit(self, event: str, **fields: Any) -> None:
        audit(event, **fields)
        self.on_event(event, str(fields.get("reason") or ""))

    def _revoked(self, ids: list[str], *, user_id: str | None, reason: str, ip: str = "") -> None:
        for sid in ids:
            self._audit("session_revoked", user_id=user_id, session_id=sid, ip=ip, reason=reason)
        if ids:
            self.on_revoke(ids)

