"""Passkeys: WebAuthn registration and login ceremonies on py_webauthn, challenges in the store.

The relying-party id is `webauthn.rp_id`, else the host of `server.public_origin`, else the host the
client used; the allowed origins are the gateway's own origin and `webauthn.origins`. Every challenge
is single-use and lives 5 minutes. A passwordless login requires user verification; a sign count
that does not grow (unless it stays 0, as for authenticators without a counter) is refused.

Must not: import aiohttp; trust anything in a credential before py_webauthn has verified it (the
challenge is read from clientDataJSON only to find the stored one, which verification then checks).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, parse_client_data_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from gateway.config import Config
from gateway.core.errors import BadRequest, Conflict, NoRoute, PasskeyInvalid, PasskeyRejected
from gateway.core.log import audit
from gateway.mfa import AMR_PASSKEY
from gateway.sessions.service import Issued, SessionService, normalize_email
from gateway.store import ChallengeRecord, MfaStore, PasskeyRecord, UserRecord

__all__ = ["CHALLENGE_TTL", "PasskeyService"]

CHALLENGE_TTL = 300.0
_REGISTER, _LOGIN = "webauthn_register", "webauthn_login"
_TRANSPORTS = {t.value for t in AuthenticatorTransport}


def _challenge_hash(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


def _client_challenge(credential: Any) -> bytes:
    """The challenge the client says it signed; only a key to find ours, verified afterwards."""
    try:
        raw = credential["response"]["clientDataJSON"]
        return bytes(parse_client_data_json(base64url_to_bytes(raw)).challenge)
    except (KeyError, TypeError, ValueError, WebAuthnException) as exc:
        raise BadRequest("credential.response.clientDataJSON is missing or malformed") from exc


def _credential(data: dict[str, Any]) -> dict[str, Any]:
    credential = data.get("credential")
    if not isinstance(credential, dict) or not isinstance(credential.get("id"), str):
        raise BadRequest("credential must be the JSON form of a PublicKeyCredential")
    return credential


class PasskeyService:
    """The passkey rules; `clock` returns epoch seconds and is injectable for tests."""

    def __init__(
        self,
        *,
        store: MfaStore,
        sessions: SessionService,
        config: Config,
        on_event: Callable[[str, str], None] = lambda event, method: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.cfg = config
        self.on_event = on_event
        self.clock = clock

    def rp_id(self, own_origin: str) -> str:
        """The relying-party id: configured, else the host of public_origin, else of the origin in use."""
        if self.cfg.webauthn.rp_id:
            return self.cfg.webauthn.rp_id
        return urlsplit(self.cfg.server.public_origin or own_origin).hostname or ""

    def _origins(self, own_origin: str) -> list[str]:
        return [own_origin, *self.cfg.webauthn.origins]

    async def _put_challenge(self, challenge: bytes, *, kind: str, user_id: str | None) -> None:
        now = self.clock()
        record = ChallengeRecord(
            key_hash=_challenge_hash(challenge), kind=kind, user_id=user_id, payload="", expires_at=now + CHALLENGE_TTL
        )
        await self.store.challenge_put(record, now=now)

    async def _take_challenge(self, credential: dict[str, Any], *, kind: str) -> tuple[bytes, ChallengeRecord | None]:
        challenge = _client_challenge(credential)
        return challenge, await self.store.challenge_take(_challenge_hash(challenge), kind=kind, now=self.clock())

    # -- registration (authenticated) ----------------------------------------------------------

    async def registration_options(self, user: UserRecord, *, own_origin: str) -> dict[str, Any]:
        """PublicKeyCredentialCreationOptions (JSON form) for navigator.credentials.create()."""
        existing = await self.store.passkey_list(user.id)
        options = generate_registration_options(
            rp_id=self.rp_id(own_origin),
            rp_name=self.cfg.webauthn.rp_name,
            user_id=user.id.encode(),
            user_name=user.email,
            timeout=int(CHALLENGE_TTL * 1000),
            # Discoverable and user-verified: the passkey alone must be able to log in, without an email.
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED, user_verification=UserVerificationRequirement.REQUIRED
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id)) for p in existing
            ],
        )
        await self._put_challenge(options.challenge, kind=_REGISTER, user_id=user.id)
        result: dict[str, Any] = json.loads(options_to_json(options))
        return result

    async def register(self, user: UserRecord, data: dict[str, Any], *, own_origin: str) -> PasskeyRecord:
        """Verifies the attestation against the user's challenge and stores the credential."""
        credential = _credential(data)
        name = data.get("name", "")
        if not isinstance(name, str) or len(name) > 64:
            raise BadRequest("name must be a string of at most 64 characters")
        challenge, pending = await self._take_challenge(credential, kind=_REGISTER)
        if pending is None or pending.user_id != user.id:
            self._audit("mfa_failure", user_id=user.id, reason="unknown_challenge")
            raise PasskeyInvalid("the registration challenge is unknown, used or expired; ask for new options")
        try:
            verified = verify_registration_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id(own_origin),
                expected_origin=self._origins(own_origin),
                require_user_verification=True,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            self._audit("mfa_failure", user_id=user.id, reason="registration_rejected")
            raise PasskeyInvalid(f"the passkey registration does not verify: {exc}") from exc
        transports = credential.get("response", {}).get("transports") or []
        record = PasskeyRecord(
            id=str(uuid.uuid4()),
            user_id=user.id,
            credential_id=bytes_to_base64url(verified.credential_id),
            public_key=bytes_to_base64url(verified.credential_public_key),
            sign_count=verified.sign_count,
            name=name.strip() or "passkey",
            transports=tuple(t for t in transports if isinstance(t, str) and t in _TRANSPORTS),
            created_at=self.clock(),
        )
        try:
            await self.store.passkey_add(record)
        except Conflict as exc:
            raise PasskeyInvalid("this passkey is registered already") from exc
        self._audit("mfa_enrolled", user_id=user.id, passkey_id=record.id)
        return record

    async def list(self, user_id: str) -> list[PasskeyRecord]:
        """The user's passkeys."""
        return await self.store.passkey_list(user_id)

    async def delete(self, user_id: str, passkey_id: str) -> None:
        """Removes one of the user's passkeys; NoRoute when it is not theirs."""
        if not await self.store.passkey_delete(user_id, passkey_id):
            raise NoRoute("no such passkey")
        self._audit("mfa_disabled", user_id=user_id, passkey_id=passkey_id)

    # -- login (anonymous) ---------------------------------------------------------------------

    async def login_options(self, email: object, *, own_origin: str) -> dict[str, Any]:
        """PublicKeyCredentialRequestOptions for a discoverable credential: the same for every email.

        Listing an account's credential ids (and none for an unknown address) told anyone who has an
        account and how many passkeys; every passkey is registered discoverable (resident key
        required), so the authenticator finds its own and the list is never needed. An email that
        is given must still be one address, as at every door.
        """
        if email is not None:
            normalize_email(email)
        options = generate_authentication_options(
            rp_id=self.rp_id(own_origin),
            timeout=int(CHALLENGE_TTL * 1000),
            allow_credentials=[],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        await self._put_challenge(options.challenge, kind=_LOGIN, user_id=None)
        result: dict[str, Any] = json.loads(options_to_json(options))
        return result

    async def login(
        self, data: dict[str, Any], *, own_origin: str, remember_me: bool, user_agent: str, ip: str
    ) -> Issued:
        """Verifies an assertion (user verification required) and opens a session with amr hwk+user+mfa."""
        credential = _credential(data)
        challenge, pending = await self._take_challenge(credential, kind=_LOGIN)
        if pending is None:
            self._audit("mfa_failure", ip=ip, reason="unknown_challenge")
            raise PasskeyRejected("the login challenge is unknown, used or expired; ask for new options")
        passkey = await self.store.passkey_find(credential["id"])
        user = await self.sessions.store.get_user(user_id=passkey.user_id) if passkey else None
        if passkey is None or user is None or user.disabled:
            self._audit("mfa_failure", ip=ip, reason="unknown_credential")
            raise PasskeyRejected("this passkey is not registered here")
        handle = (credential.get("response") or {}).get("userHandle")
        if handle and handle != base64.urlsafe_b64encode(user.id.encode()).rstrip(b"=").decode():
            self._audit("mfa_failure", user_id=user.id, ip=ip, reason="user_handle_mismatch")
            raise PasskeyRejected("the passkey's user handle does not match its account")
        try:
            verified = verify_authentication_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id(own_origin),
                expected_origin=self._origins(own_origin),
                credential_public_key=base64url_to_bytes(passkey.public_key),
                credential_current_sign_count=passkey.sign_count,
                require_user_verification=True,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            # py_webauthn refuses a sign count that did not grow (unless both are 0): a cloned authenticator.
            reason = "sign_count" if "sign count" in str(exc).lower() else "assertion_rejected"
            self._audit("mfa_failure", user_id=user.id, ip=ip, reason=reason, passkey_id=passkey.id)
            raise PasskeyRejected(f"the passkey assertion does not verify: {exc}") from exc
        if not await self.store.passkey_used(
            passkey.id, old_count=passkey.sign_count, new_count=verified.new_sign_count, now=self.clock()
        ):
            # Another login with this credential moved the counter between our read and this write.
            self._audit("mfa_failure", user_id=user.id, ip=ip, reason="sign_count", passkey_id=passkey.id)
            raise PasskeyRejected("the passkey was used concurrently; try again")
        self._audit("mfa_verified", user_id=user.id, ip=ip, passkey_id=passkey.id)
        return await self.sessions.start_session(
            user, remember_me=remember_me, user_agent=user_agent, ip=ip, amr=AMR_PASSKEY
        )

    def _audit(self, event: str, **fields: Any) -> None:
        audit(event, method="passkey", **fields)
        self.on_event(event, "passkey")
