"""The account rules: sign-up, email verification, password reset and change, on a `Store`.

Answers that could tell whether an address has an account (sign-up, resend, forgot) do the same
work in the request whatever the address: check the input, count the `email` limit, then hand the
rest (hashing, the lookup, a token, a mail or none) to a background task. So their body and their
time are the same for a new, an existing, an unknown or a disabled address.

Must not: import aiohttp; send mail itself (mails go to the outbox, the sender task delivers them);
or keep a token in plaintext anywhere but the mail it is for.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from gateway.accounts.mail import MailKind, render_mail
from gateway.config import Config
from gateway.core.errors import BadRequest, GatewayError, InvalidEmailToken, RateLimited, WrongCurrentPassword
from gateway.core.log import audit, auth_log
from gateway.sessions.service import SessionService, check_password, normalize_email
from gateway.store import EmailToken, Store
from gateway.tokens.keyring import hash_refresh_token, new_refresh_token

__all__ = ["AccountService", "link_base"]

_MAX_TOKEN = 256


def link_base(cfg: Config) -> str:
    """Where mail links point: `accounts.link_base`, else `server.public_origin`, else our own address.

    Never the request's Host: a forged Host would put an attacker's site into a reset mail.
    """
    if cfg.accounts.link_base:
        return cfg.accounts.link_base
    if cfg.server.public_origin:
        return cfg.server.public_origin.rstrip("/")
    scheme = "https" if cfg.server.tls_cert else "http"
    return f"{scheme}://{cfg.server.host}:{cfg.server.port}"


def _ttl_text(ttl: timedelta) -> str:
    seconds = int(ttl.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit[:-1] if count == 1 else unit}"
    return f"{seconds} seconds"


def _token(raw: object) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > _MAX_TOKEN:
        raise BadRequest("token must be a non-empty string")
    return raw


class AccountService:
    """The self-service rules; `clock` returns epoch seconds; `on_mail` is called when a mail is queued."""

    def __init__(
        self,
        *,
        store: Store,
        sessions: SessionService,
        config: Config,
        clock: Callable[[], float] = time.time,
        on_mail: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.cfg = config
        self.clock = clock
        self.on_mail = on_mail
        self._site = link_base(config) + "/"
        self._base = link_base(config) + config.server.auth_prefix
        self._tasks: set[asyncio.Task[None]] = set()

    # -- answers that reveal nothing -----------------------------------------------------------

    async def signup(self, email: object, password: object, *, ip: str) -> None:
        """Queues the sign-up; the caller answers 202 whatever the address."""
        shown, key = normalize_email(email)
        password = check_password(password)
        await self._email_limit(key, ip)
        self._spawn(self._signup(shown, key, password, ip=ip))

    async def resend_verification(self, email: object, *, ip: str) -> None:
        """Queues a new verification mail for an unverified, enabled account; else nothing."""
        _, key = normalize_email(email)
        await self._email_limit(key, ip)
        self._spawn(self._resend(key, ip=ip))

    async def forgot_password(self, email: object, *, ip: str) -> None:
        """Queues a reset mail for an enabled account; else nothing."""
        _, key = normalize_email(email)
        await self._email_limit(key, ip)
        self._spawn(self._forgot(key, ip=ip))

    async def _signup(self, shown: str, key: str, password: str, *, ip: str) -> None:
        pw_hash = await self.sessions.hash_password(password)  # on both paths: the same work either way
        now = self.clock()
        raw = new_refresh_token()
        user_id = str(uuid.uuid4())
        created = await self.store.signup_user(
            user_id=user_id, email=shown, email_key=key, password_hash=pw_hash, now=now,
            token=EmailToken(hash_refresh_token(raw), "verify", now + self.cfg.accounts.verify_ttl.total_seconds()),
            mail=self._mail("verify", shown, f"{self._base}/verify-email?token={raw}", self.cfg.accounts.verify_ttl),
        )  # fmt: skip
        if created:
            audit("signup", user_id=user_id, ip=ip)
        else:
            existing = await self.store.get_user(email_key=key)
            to = existing.email if existing else shown
            await self.store.enqueue_mail(self._mail("exists", to, self._site), now=now)
            audit("signup_existing", user_id=existing.id if existing else None, ip=ip)
        self.on_mail()

    async def _resend(self, key: str, *, ip: str) -> None:
        user = await self.store.get_user(email_key=key)
        if user is None or user.disabled or await self.store.is_email_verified(user.id):
            return
        await self._issue(user.id, user.email, "verify", self.cfg.accounts.verify_ttl)
        audit("verification_resent", user_id=user.id, ip=ip)

    async def _forgot(self, key: str, *, ip: str) -> None:
        user = await self.store.get_user(email_key=key)
        if user is None or user.disabled:
            return
        await self._issue(user.id, user.email, "reset", self.cfg.accounts.reset_ttl)
        audit("password_reset_requested", user_id=user.id, ip=ip)

    async def _issue(self, user_id: str, to: str, kind: MailKind, ttl: timedelta) -> None:
        raw = new_refresh_token()
        now = self.clock()
        page = "verify-email" if kind == "verify" else "reset-password"
        token = EmailToken(hash_refresh_token(raw), "verify" if kind == "verify" else "reset", now + ttl.total_seconds())
        mail = self._mail(kind, to, f"{self._base}/{page}?token={raw}", ttl)
        await self.store.issue_email_token(user_id, token=token, mail=mail, now=now)
        self.on_mail()

    def _mail(self, kind: MailKind, to: str, link: str, ttl: timedelta | None = None) -> Any:
        return render_mail(kind, sender=self.cfg.email.sender, to=to, link=link, ttl=_ttl_text(ttl) if ttl else "")

    async def _email_limit(self, key: str, ip: str) -> None:
        wait = await self.store.take_limit((f"email:to:{key}", f"email:ip:{ip}"), rate=self.cfg.limits.email, now=self.clock())
        if wait:
            audit("email_limited", ip=ip, reason="rate_limited")
            raise RateLimited("too many mails asked for; try again later", retry_after=wait)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The client already has its 202; the operator gets the reason (never the token or password).
            level = auth_log.warning if isinstance(exc, GatewayError) else auth_log.error
            level("account mail not queued reason=%s: %s", type(exc).__name__, exc)

    async def drain(self) -> None:
        """Waits for queued background work (at shutdown, before the store closes)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- tokens --------------------------------------------------------------------------------

    async def verify_email(self, token: object, *, ip: str) -> None:
        """Uses up a verification token; InvalidEmailToken when it is not live."""
        out = await self.store.redeem_email_token(hash_refresh_token(_token(token)), kind="verify", now=self.clock())
        if out is None:
            audit("email_verify_failure", ip=ip, reason="invalid_email_token")
            raise InvalidEmailToken("the link is unknown, already used, replaced by a newer one, or expired")
        audit("email_verified", user_id=out[0], ip=ip)

    async def reset_password(self, token: object, password: object, *, ip: str) -> None:
        """Sets a new password with a reset token and revokes every session of the user."""
        raw = _token(token)
        pw_hash = await self.sessions.hash_password(check_password(password))
        out = await self.store.redeem_email_token(
            hash_refresh_token(raw), kind="reset", now=self.clock(), password_hash=pw_hash
        )
        if out is None:
            audit("password_reset_failure", ip=ip, reason="invalid_email_token")
            raise InvalidEmailToken("the link is unknown, already used, replaced by a newer one, or expired")
        user_id, revoked = out
        audit("password_reset", user_id=user_id, ip=ip)
        self._revoked(revoked, user_id=user_id, reason="password_reset", ip=ip)

    async def change_password(self, *, user_id: str, session_id: str, current: object, new: object, ip: str) -> None:
        """Checks the current password, sets the new one, revokes the user's other sessions."""
        if not isinstance(current, str) or not current or len(current) > 1024:
            raise BadRequest("current_password must be a string of 1 to 1024 characters")
        new_password = check_password(new)
        user = await self.store.get_user(user_id=user_id)
        if user is None or user.disabled:
            raise WrongCurrentPassword("the current password is wrong")
        # Guesses of the current password count against the login limit of the account and address.
        keys = (f"login:ip:{ip}", f"login:email:{user.email_key}")
        rate = self.sessions.limits.login
        wait = await self.store.take_limit(keys, rate=rate, now=self.clock())
        if wait:
            raise RateLimited("too many failed attempts; try again later", retry_after=wait)
        if not await self.sessions.check_password_of(user, current):
            audit("password_change_failure", user_id=user.id, ip=ip, reason="invalid_credentials")
            raise WrongCurrentPassword("the current password is wrong")
        await self.store.give_back_limit(keys, rate=rate)
        pw_hash = await self.sessions.hash_password(new_password)
        revoked = await self.store.change_password(user.id, password_hash=pw_hash, now=self.clock(), keep_session_id=session_id)
        audit("password_changed", user_id=user.id, session_id=session_id, ip=ip)
        self._revoked(revoked, user_id=user.id, reason="password_changed", ip=ip)

    def _revoked(self, ids: list[str], *, user_id: str, reason: str, ip: str) -> None:
        for sid in ids:
            audit("session_revoked", user_id=user_id, session_id=sid, ip=ip, reason=reason)
        if ids:
            self.sessions.on_revoke(ids)  # the app's hook: refused at once here, WebSockets closed
