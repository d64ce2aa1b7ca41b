"""TOTP enrolment, recovery codes, the two-step login (mfa_token) and the admin reset, on an `MfaStore`.

Must not: import aiohttp or know about cookies and headers; log or return a TOTP secret except in the
one enrolment answer; keep an mfa_token or recovery code other than as a digest.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import Config, Rate
from gateway.core.errors import MfaCodeInvalid, MfaCodeRefused, MfaStateError, MfaTokenInvalid, NoRoute, RateLimited
from gateway.core.log import audit
from gateway.mfa import AMR_RECOVERY, AMR_TOTP, recovery, totp
from gateway.mfa.secretbox import SecretBox
from gateway.sessions.service import Issued, SessionService
from gateway.store import ChallengeRecord, MfaStore, UserRecord

__all__ = ["MFA_TOKEN_TRIES", "MFA_TOKEN_TTL", "Enrolment", "MfaService", "PendingLogin"]

MFA_TOKEN_TTL = 300.0
MFA_TOKEN_TRIES = 5
_KIND = "mfa_login"
# Wrong codes on the authenticated endpoints (confirm, disable, new recovery codes), per user, counted in the store:
# a stolen access token must not be enough to guess the six digits that turn the factor off.
_CODE_FAILURES = Rate(count=5, period_s=300)
# Wrong second steps per user, across all of their mfa_tokens: whoever has the password can mint
# tokens (five tries each) at will, so the tries of one token alone do not bound the guessing.
_LOGIN_FAILURES = Rate(count=10, period_s=900)


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What the user needs to add the account to an authenticator app (shown once)."""

    secret: str
    otpauth_uri: str
    qr_svg: str


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """A password check that needs its second step: the token for it and the methods that can answer."""

    mfa_token: str
    methods: list[str]


def _token_hash(token: str) -> str:
    # The token is 256 random bits: a plain hash is enough, and lets every instance find it.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class MfaService:
    """The second-factor rules; `clock` returns epoch seconds and is injectable for tests."""

    def __init__(
        self,
        *,
        store: MfaStore,
        sessions: SessionService,
        config: Config,
        box: SecretBox | None = None,
        on_event: Callable[[str, str], None] = lambda event, method: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.cfg = config
        self.box = box or SecretBox.from_config(config.mfa, config.tokens)
        self.on_event = on_event
        self.clock = clock
        # Wrong codes are counted in the store's shared limits (every worker and instance together),
        # reserved before the check and given back on success, as failed logins are.
        self._limits = sessions.store

    # -- TOTP enrolment ------------------------------------------------------------------------

    async def totp_enroll(self, user: UserRecord) -> Enrolment:
        """A new pending secret (replacing a pending one); MfaStateError while TOTP is on."""
        secret = totp.new_secret()
        if not await self.store.totp_begin(user.id, secret=self.box.seal(secret, user_id=user.id), now=self.clock()):
            raise MfaStateError("TOTP is already on; turn it off first")
        uri = totp.provisioning_uri(secret, account=user.email, issuer=self.cfg.mfa.totp_issuer)
        self._audit("mfa_enroll_started", "totp", user_id=user.id)
        return Enrolment(secret=secret, otpauth_uri=uri, qr_svg=totp.qr_svg_data_uri(uri))

    async def totp_confirm(self, user_id: str, code: object) -> list[str]:
        """Turns the pending secret on with a current code; returns the ten recovery codes (shown once)."""
        record = await self.store.totp_get(user_id)
        if record is None or record.confirmed:
            raise MfaStateError("there is no pending TOTP enrolment; enrol first")
        await self._check_throttle(user_id)
        step = self._step(self.box.open(record.secret, user_id=user_id), code)
        codes = recovery.new_codes()
        hashes = [self.box.digest(recovery.normalize(c) or "") for c in codes]
        if step is None or not await self.store.totp_confirm(
            user_id, step=step, recovery_hashes=hashes, now=self.clock()
        ):
            self._refuse(user_id, "totp", "wrong_code")
        await self._forgive(user_id)
        self._audit("mfa_enrolled", "totp", user_id=user_id)
        return codes

    async def totp_disable(self, user_id: str, code: object) -> list[str]:
        """Turns TOTP off (and voids the recovery codes) given a current code, and ends every session
        that a TOTP or recovery code opened; returns their ids.

        Such a session passes `mfa = true` routes on the strength of a factor the account no longer
        has; it ends with the factor (sessions opened by a password alone or a passkey go on).
        """
        await self._require_code(user_id, code)
        await self.store.totp_delete(user_id)  # first: no new TOTP session can start after this
        self._audit("mfa_disabled", "totp", user_id=user_id)
        ended: list[str] = []
        for session in await self.sessions.list_sessions(user_id):
            if "otp" in session.amr:
                try:
                    ended += await self.sessions.revoke_session(session.id, reason="mfa_disabled", user_id=user_id)
                except NoRoute:
                    continue  # swept since it was listed: nothing left to end
        return ended

    async def regenerate_recovery_codes(self, user_id: str, code: object) -> list[str]:
        """Ten new recovery codes, voiding the old ones, given a current TOTP code."""
        await self._require_code(user_id, code)
        codes = recovery.new_codes()
        await self.store.recovery_replace(
            user_id, hashes=[self.box.digest(recovery.normalize(c) or "") for c in codes], now=self.clock()
        )
        self._audit("recovery_codes_regenerated", "recovery_code", user_id=user_id)
        return codes

    async def status(self, user_id: str) -> dict[str, Any]:
        """Which factors the user has: `{"totp", "totp_pending", "recovery_codes_left", "passkeys"}`."""
        record = await self.store.totp_get(user_id)
        return {
            "totp": bool(record and record.confirmed),
            "totp_pending": bool(record and not record.confirmed),
            "recovery_codes_left": await self.store.recovery_count(user_id),
            "passkeys": len(await self.store.passkey_list(user_id)),
        }

    async def _require_code(self, user_id: str, code: object) -> None:
        record = await self.store.totp_get(user_id)
        if record is None or not record.confirmed:
            raise MfaStateError("TOTP is not on")
        await self._check_throttle(user_id)
        step = self._step(self.box.open(record.secret, user_id=user_id), code)
        if step is None or not await self.store.totp_accept_step(user_id, step=step):
            self._refuse(user_id, "totp", "wrong_code")
        await self._forgive(user_id)

    def _step(self, secret: str, code: object) -> int | None:
        digits = totp.normalize_code(code)
        return None if digits is None else totp.matching_step(secret, digits, now=self.clock())

    async def _check_throttle(self, user_id: str) -> None:
        wait = await self._limits.take_limit((f"mfa:code:{user_id}",), rate=_CODE_FAILURES, now=self.clock())
        if wait:
            self._audit("mfa_failure", "totp", user_id=user_id, reason="rate_limited")
            raise RateLimited("too many wrong codes; try again later", retry_after=wait)

    async def _forgive(self, user_id: str) -> None:
        await self._limits.give_back_limit((f"mfa:code:{user_id}",), rate=_CODE_FAILURES)

    def _refuse(self, user_id: str, method: str, reason: str) -> None:
        self._audit("mfa_failure", method, user_id=user_id, reason=reason)
        raise MfaCodeRefused("the code is wrong, expired or already used")

    # -- two-step login ------------------------------------------------------------------------

    async def begin_login(self, user: UserRecord, *, remember_me: bool, refresh_in_body: bool) -> PendingLogin | None:
        """After a right password: None when the user has no second factor, else the mfa_token for step two."""
        record = await self.store.totp_get(user.id)
        if record is None or not record.confirmed:
            return None
        token = secrets.token_urlsafe(32)
        now = self.clock()
        payload = json.dumps({"remember_me": remember_me, "refresh_in_body": refresh_in_body})
        await self.store.challenge_put(
            ChallengeRecord(
                key_hash=_token_hash(token),
                kind=_KIND,
                user_id=user.id,
                payload=payload,
                expires_at=now + MFA_TOKEN_TTL,
            ),
            now=now,
        )
        self._audit("mfa_challenge", "totp", user_id=user.id)
        return PendingLogin(mfa_token=token, methods=["totp", "recovery_code"])

    async def finish_login(
        self, mfa_token: object, *, code: object, recovery_code: object, user_agent: str, ip: str
    ) -> tuple[Issued, bool]:
        """Step two: a TOTP or recovery code for a live mfa_token opens the session; returns it and refresh_in_body."""
        if not isinstance(mfa_token, str) or not mfa_token or len(mfa_token) > 256:
            raise MfaTokenInvalid("the mfa_token is missing or malformed")
        key = _token_hash(mfa_token)
        now = self.clock()
        # The try is counted before the code is looked at, in the store, so parallel guesses on all
        # instances together get five, and the sixth is refused even when its code is right.
        pending = await self.store.challenge_try(key, kind=_KIND, now=now, max_tries=MFA_TOKEN_TRIES)
        if pending is None or pending.user_id is None:
            self._audit("mfa_failure", "mfa_token", ip=ip, reason="invalid_mfa_token")
            raise MfaTokenInvalid("the mfa_token is unknown, expired, used or out of tries; log in again")
        user = await self.sessions.store.get_user(user_id=pending.user_id)
        if user is None or user.disabled:
            await self.store.challenge_take(key, kind=_KIND, now=now)
            raise MfaTokenInvalid("the mfa_token is no longer valid; log in again")
        login_key = (f"mfa:login:{user.id}",)
        wait = await self._limits.take_limit(login_key, rate=_LOGIN_FAILURES, now=now)
        if wait:
            self._audit("mfa_failure", "mfa_token", user_id=user.id, ip=ip, reason="rate_limited")
            raise RateLimited("too many wrong second-factor codes for this account; try again later", retry_after=wait)
        if recovery_code is not None:
            method, amr = "recovery_code", AMR_RECOVERY
            value = recovery.normalize(recovery_code)
            ok = value is not None and await self.store.recovery_use(user.id, code_hash=self.box.digest(value), now=now)
        else:
            method, amr = "totp", AMR_TOTP
            record = await self.store.totp_get(user.id)
            step = (
                self._step(self.box.open(record.secret, user_id=user.id), code) if record and record.confirmed else None
            )
            ok = step is not None and await self.store.totp_accept_step(user.id, step=step)
        if not ok:
            self._audit("mfa_failure", method, user_id=user.id, ip=ip, reason="wrong_code", tries=pending.tries)
            raise MfaCodeInvalid("the code is wrong, expired or already used")
        await self._limits.give_back_limit(login_key, rate=_LOGIN_FAILURES)
        if await self.store.challenge_take(key, kind=_KIND, now=now) is None:
            # A concurrent second step with this token won; the token is single-use.
            raise MfaTokenInvalid("the mfa_token was already used; log in again")
        options = json.loads(pending.payload or "{}")
        self._audit("mfa_verified", method, user_id=user.id, ip=ip)
        issued = await self.sessions.start_session(
            user, remember_me=bool(options.get("remember_me")), user_agent=user_agent, ip=ip, amr=amr
        )
        return issued, bool(options.get("refresh_in_body"))

    # -- admin ---------------------------------------------------------------------------------

    async def reset(self, email: str) -> list[str]:
        """Removes every second factor of the user and revokes their sessions (`gateway users mfa-reset`)."""
        user = await self.sessions.get_user(email)
        revoked = await self.store.mfa_reset(user.id, now=self.clock())
        self._audit("mfa_reset", "all", user_id=user.id)
        self.sessions._revoked(revoked, user_id=user.id, reason="mfa_reset")
        return revoked

    async def user(self, user_id: str) -> UserRecord:
        """The user an access token names; NoRoute when it is gone."""
        user = await self.sessions.store.get_user(user_id=user_id)
        if user is None:
            raise NoRoute("no such user")
        return user

    def _audit(self, event: str, method: str, **fields: Any) -> None:
        audit(event, method=method, **fields)
        self.on_event(event, method)
