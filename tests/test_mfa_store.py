"""The second-factor part of the store (`MfaStore`), one contract run on a real SQLite file and on PostgreSQL.

Kept apart from tests/store_contract.py so the capability's tests live with it; both backends run every test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import StoreConfig
from gateway.core.errors import Conflict
from gateway.store import (
    ChallengeRecord,
    EmailToken,
    NewMail,
    PasskeyRecord,
    SessionRecord,
    Store,
    UserRecord,
    open_store,
)

T0 = 1_700_000_000.0


async def _user(store: Any, email: str = "alice@example.com") -> UserRecord:
    user: UserRecord = await store.create_user(
        user_id=str(uuid.uuid4()), email=email, email_key=email.lower(), password_hash="argon2-hash", now=T0
    )
    return user


async def _session(store: Store, user: UserRecord) -> SessionRecord:
    record = SessionRecord(
        id=str(uuid.uuid4()), user_id=user.id, created_at=T0, last_used_at=T0, expires_at=T0 + 100,
        absolute_expires_at=T0 + 1000, remember_me=False, user_agent="pytest", ip="192.0.2.7",
    )  # fmt: skip
    await store.create_session(record, token_hash=f"hash-{uuid.uuid4().hex}")
    return record


def _passkey(user: UserRecord, credential_id: str = "cred-1", count: int = 0) -> PasskeyRecord:
    return PasskeyRecord(
        id=str(uuid.uuid4()), user_id=user.id, credential_id=credential_id, public_key="pQECAyYgASFYIA",
        sign_count=count, name="laptop", transports=("internal", "hybrid"), created_at=T0,
    )  # fmt: skip


def _email_token(kind: str, n: int = 0) -> EmailToken:
    return EmailToken(token_hash=f"token-{kind}-{n}", kind=kind, expires_at=T0 + 3600)


def _mail() -> NewMail:
    return NewMail(sender="no-reply@example.com", recipient="victim@corp.com", message="Subject: x\n\nx")


def _challenge(
    user: UserRecord | None, *, kind: str = "mfa_login", ttl: float = 300, key: str | None = None
) -> ChallengeRecord:
    return ChallengeRecord(
        key_hash=key or uuid.uuid4().hex,
        kind=kind,
        user_id=user.id if user else None,
        payload='{"a":1}',
        expires_at=T0 + ttl,
    )


class MfaStoreContract:
    """Subclasses provide `store`; every test must pass on every backend."""

    # -- TOTP ----------------------------------------------------------------------------------

    async def test_totp_begin_then_get_is_pending(self, store: Any) -> None:
        user = await _user(store)
        assert await store.totp_get(user.id) is None
        assert await store.totp_begin(user.id, secret="ciphertext", now=T0) is True
        rec = await store.totp_get(user.id)
        assert (rec.secret, rec.confirmed, rec.last_step) == ("ciphertext", False, -1)

    async def test_totp_begin_replaces_pending_but_never_a_confirmed_one(self, store: Any) -> None:
        user = await _user(store)
        await store.totp_begin(user.id, secret="one", now=T0)
        assert await store.totp_begin(user.id, secret="two", now=T0) is True
        assert (await store.totp_get(user.id)).secret == "two"
        assert await store.totp_confirm(user.id, step=100, recovery_hashes=["h1"], now=T0) is True
        assert await store.totp_begin(user.id, secret="three", now=T0) is False
        rec = await store.totp_get(user.id)
        assert (rec.secret, rec.confirmed, rec.last_step) == ("two", True, 100)

    async def test_totp_confirm_needs_a_pending_factor(self, store: Any) -> None:
        user = await _user(store)
        assert await store.totp_confirm(user.id, step=5, recovery_hashes=["h"], now=T0) is False
        await store.totp_begin(user.id, secret="s", now=T0)
        assert await store.totp_confirm(user.id, step=5, recovery_hashes=["h1", "h2"], now=T0) is True
        assert await store.totp_confirm(user.id, step=6, recovery_hashes=["h3"], now=T0) is False
        assert await store.recovery_count(user.id) == 2

    async def test_totp_accept_step_only_moves_forward(self, store: Any) -> None:
        user = await _user(store)
        await store.totp_begin(user.id, secret="s", now=T0)
        assert await store.totp_accept_step(user.id, step=10) is False  # not confirmed yet
        await store.totp_confirm(user.id, step=10, recovery_hashes=[], now=T0)
        assert await store.totp_accept_step(user.id, step=10) is False  # the confirming code
        assert await store.totp_accept_step(user.id, step=9) is False
        assert await store.totp_accept_step(user.id, step=11) is True
        assert await store.totp_accept_step(user.id, step=11) is False
        assert (await store.totp_get(user.id)).last_step == 11

    async def test_totp_accept_step_concurrent_twins_exactly_one_wins(self, store: Any) -> None:
        user = await _user(store)
        await store.totp_begin(user.id, secret="s", now=T0)
        await store.totp_confirm(user.id, step=1, recovery_hashes=[], now=T0)
        results = await asyncio.gather(*[store.totp_accept_step(user.id, step=2) for _ in range(10)])
        assert sorted(results) == [False] * 9 + [True]

    async def test_totp_delete_removes_factor_and_recovery_codes(self, store: Any) -> None:
        user = await _user(store)
        assert await store.totp_delete(user.id) is False
        await store.totp_begin(user.id, secret="s", now=T0)
        await store.totp_confirm(user.id, step=1, recovery_hashes=["a", "b"], now=T0)
        assert await store.totp_delete(user.id) is True
        assert await store.totp_get(user.id) is None
        assert await store.recovery_count(user.id) == 0

    # -- recovery codes ------------------------------------------------------------------------

    async def test_recovery_use_works_once_per_code(self, store: Any) -> None:
        user = await _user(store)
        other = await _user(store, "bob@example.com")
        await store.recovery_replace(user.id, hashes=["a", "b", "c"], now=T0)
        assert await store.recovery_use(other.id, code_hash="a", now=T0) is False
        assert await store.recovery_use(user.id, code_hash="a", now=T0) is True
        assert await store.recovery_use(user.id, code_hash="a", now=T0) is False
        assert await store.recovery_use(user.id, code_hash="zzz", now=T0) is False
        assert await store.recovery_count(user.id) == 2

    async def test_recovery_use_concurrent_exactly_one_wins(self, store: Any) -> None:
        user = await _user(store)
        await store.recovery_replace(user.id, hashes=["a"], now=T0)
        results = await asyncio.gather(*[store.recovery_use(user.id, code_hash="a", now=T0) for _ in range(10)])
        assert sorted(results) == [False] * 9 + [True]

    async def test_recovery_replace_voids_the_old_codes(self, store: Any) -> None:
        user = await _user(store)
        await store.recovery_replace(user.id, hashes=["a", "b"], now=T0)
        await store.recovery_replace(user.id, hashes=["c"], now=T0)
        assert await store.recovery_use(user.id, code_hash="a", now=T0) is False
        assert await store.recovery_count(user.id) == 1

    # -- challenges ----------------------------------------------------------------------------

    async def test_challenge_try_counts_and_stops_at_max(self, store: Any) -> None:
        user = await _user(store)
        c = _challenge(user)
        await store.challenge_put(c, now=T0)
        tries = [await store.challenge_try(c.key_hash, kind="mfa_login", now=T0, max_tries=5) for _ in range(6)]
        assert [t.tries if t else None for t in tries] == [1, 2, 3, 4, 5, None]
        assert tries[0].user_id == user.id and tries[0].payload == '{"a":1}'

    async def test_challenge_try_concurrent_counts_exactly(self, store: Any) -> None:
        user = await _user(store)
        c = _challenge(user)
        await store.challenge_put(c, now=T0)
        results = await asyncio.gather(
            *[store.challenge_try(c.key_hash, kind="mfa_login", now=T0, max_tries=5) for _ in range(20)]
        )
        assert sorted(r.tries for r in results if r is not None) == [1, 2, 3, 4, 5]
        assert sum(r is None for r in results) == 15

    async def test_challenge_try_refuses_expired_unknown_and_other_kind(self, store: Any) -> None:
        user = await _user(store)
        c = _challenge(user, ttl=60)
        await store.challenge_put(c, now=T0)
        assert await store.challenge_try(c.key_hash, kind="webauthn_login", now=T0, max_tries=5) is None
        assert await store.challenge_try("nope", kind="mfa_login", now=T0, max_tries=5) is None
        assert await store.challenge_try(c.key_hash, kind="mfa_login", now=T0 + 60, max_tries=5) is None

    async def test_challenge_take_is_single_use(self, store: Any) -> None:
        c = _challenge(None, kind="webauthn_login")
        await store.challenge_put(c, now=T0)
        assert await store.challenge_take(c.key_hash, kind="mfa_login", now=T0) is None
        got = await store.challenge_take(c.key_hash, kind="webauthn_login", now=T0)
        assert got is not None and got.user_id is None and got.kind == "webauthn_login"
        assert await store.challenge_take(c.key_hash, kind="webauthn_login", now=T0) is None

    async def test_challenge_take_concurrent_exactly_one_gets_it(self, store: Any) -> None:
        c = _challenge(None, kind="webauthn_login")
        await store.challenge_put(c, now=T0)
        results = await asyncio.gather(
            *[store.challenge_take(c.key_hash, kind="webauthn_login", now=T0) for _ in range(10)]
        )
        assert sum(r is not None for r in results) == 1

    async def test_challenge_take_expired_gives_nothing(self, store: Any) -> None:
        c = _challenge(None, ttl=60)
        await store.challenge_put(c, now=T0)
        assert await store.challenge_take(c.key_hash, kind="mfa_login", now=T0 + 61) is None

    async def test_challenge_put_drops_expired_ones(self, store: Any) -> None:
        old = _challenge(None, ttl=10)
        await store.challenge_put(old, now=T0)
        await store.challenge_put(_challenge(None), now=T0 + 20)
        # Gone for good: even a clock moved back would not find it.
        assert await store.challenge_take(old.key_hash, kind="mfa_login", now=T0) is None

    # -- passkeys ------------------------------------------------------------------------------

    async def test_passkey_add_list_find(self, store: Any) -> None:
        user = await _user(store)
        pk = _passkey(user)
        await store.passkey_add(pk)
        assert await store.passkey_list(user.id) == [pk]
        assert await store.passkey_find("cred-1") == pk
        assert await store.passkey_find("cred-2") is None

    async def test_passkey_add_same_credential_twice_conflicts(self, store: Any) -> None:
        user = await _user(store)
        await store.passkey_add(_passkey(user))
        with pytest.raises(Conflict):
            await store.passkey_add(_passkey(user))

    async def test_passkey_used_is_compare_and_set(self, store: Any) -> None:
        user = await _user(store)
        pk = _passkey(user, count=5)
        await store.passkey_add(pk)
        assert await store.passkey_used(pk.id, old_count=4, new_count=6, now=T0 + 1) is False
        assert await store.passkey_used(pk.id, old_count=5, new_count=6, now=T0 + 1) is True
        found = await store.passkey_find(pk.credential_id)
        assert (found.sign_count, found.last_used_at) == (6, T0 + 1)

    async def test_passkey_delete_only_the_owners(self, store: Any) -> None:
        user = await _user(store)
        other = await _user(store, "bob@example.com")
        pk = _passkey(user)
        await store.passkey_add(pk)
        assert await store.passkey_delete(other.id, pk.id) is False
        assert await store.passkey_delete(user.id, pk.id) is True
        assert await store.passkey_list(user.id) == []

    # -- reset ---------------------------------------------------------------------------------

    async def test_mfa_reset_removes_every_factor_and_revokes_sessions(self, store: Any) -> None:
        user = await _user(store)
        other = await _user(store, "bob@example.com")
        await store.totp_begin(user.id, secret="s", now=T0)
        await store.totp_confirm(user.id, step=1, recovery_hashes=["a"], now=T0)
        await store.passkey_add(_passkey(user))
        await store.passkey_add(_passkey(other, "cred-other"))
        c = _challenge(user)
        await store.challenge_put(c, now=T0)
        s1, s2 = await _session(store, user), await _session(store, other)
        assert await store.mfa_reset(user.id, now=T0 + 1) == [s1.id]
        assert await store.totp_get(user.id) is None
        assert await store.recovery_count(user.id) == 0
        assert await store.passkey_list(user.id) == []
        assert await store.challenge_take(c.key_hash, kind="mfa_login", now=T0) is None
        assert (await store.find_session(session_id=s1.id)).revoked_reason == "mfa_reset"
        assert (await store.find_session(session_id=s2.id)).revoked_at is None
        assert len(await store.passkey_list(other.id)) == 1
        assert [e.session_id for e in await store.revocations_since(0)] == [s1.id]


    # -- what a new password, a disabled user or a takeover voids ------------------------------

    async def test_challenge_claim_is_once_until_it_expires(self, store: Any) -> None:
        c = _challenge(None, kind="oidc_flow", ttl=60)
        assert await store.challenge_claim(c, now=T0) is True
        assert await store.challenge_claim(c, now=T0 + 59) is False
        # concurrent claims of one key: exactly one wins
        d = _challenge(None, kind="oidc_flow", ttl=60)
        wins = await asyncio.gather(*(store.challenge_claim(d, now=T0) for _ in range(8)))
        assert sorted(wins) == [False] * 7 + [True]
        # once expired it is dropped, and the key may be claimed again
        assert await store.challenge_claim(c, now=T0 + 61) is True

    async def test_new_password_or_disable_voids_pending_challenges_and_email_tokens(self, store: Any) -> None:
        user, other = await _user(store), await _user(store, "bob@example.com")
        for n, changes in enumerate(({"password_hash": "new-hash"}, {"disabled": True})):
            mine, theirs = _challenge(user), _challenge(other)
            await store.challenge_put(mine, now=T0)
            await store.challenge_put(theirs, now=T0)
            await store.issue_email_token(user.id, token=_email_token("verify", n), mail=_mail(), now=T0)
            await store.update_user(user.id, now=T0 + 1, **changes)
            assert await store.challenge_take(mine.key_hash, kind="mfa_login", now=T0 + 2) is None
            assert await store.redeem_email_token(_email_token("verify", n).token_hash, kind="verify", now=T0 + 2) is None
            assert await store.challenge_take(theirs.key_hash, kind="mfa_login", now=T0 + 2) is not None
            await store.update_user(user.id, now=T0 + 3, disabled=False)

    async def test_change_password_voids_pending_challenges(self, store: Any) -> None:
        user = await _user(store)
        c = _challenge(user)
        await store.challenge_put(c, now=T0)
        keep = await _session(store, user)
        assert await store.change_password(user.id, password_hash="new", now=T0 + 1, keep_session_id=keep.id) == []
        assert await store.challenge_take(c.key_hash, kind="mfa_login", now=T0 + 2) is None

    async def test_take_over_unverified_strips_the_account(self, store: Any) -> None:
        ok = await store.signup_user(
            user_id=str(uuid.uuid4()), email="victim@corp.com", email_key="victim@corp.com", password_hash="attacker",
            now=T0, token=_email_token("verify"), mail=_mail(),
        )  # fmt: skip
        assert ok is True
        user = await store.get_user(email_key="victim@corp.com")
        await store.totp_begin(user.id, secret="s", now=T0)
        await store.totp_confirm(user.id, step=1, recovery_hashes=["a"], now=T0)
        await store.passkey_add(_passkey(user))
        c = _challenge(user)
        await store.challenge_put(c, now=T0)
        s1 = await _session(store, user)
        assert await store.take_over_unverified(user.id, password_hash="unusable", now=T0 + 1) == [s1.id]
        after = await store.get_user(user_id=user.id)
        assert after.password_hash == "unusable" and await store.is_email_verified(user.id)
        assert await store.totp_get(user.id) is None and await store.recovery_count(user.id) == 0
        assert await store.passkey_list(user.id) == []
        assert await store.challenge_take(c.key_hash, kind="mfa_login", now=T0 + 2) is None
        assert await store.redeem_email_token(_email_token("verify").token_hash, kind="verify", now=T0 + 2) is None
        assert (await store.find_session(session_id=s1.id)).revoked_reason == "account_taken_over"
        # a verified address is never taken over (nor twice)
        assert await store.take_over_unverified(user.id, password_hash="again", now=T0 + 3) is None
        assert (await store.get_user(user_id=user.id)).password_hash == "unusable"


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    path = tmp_path / "gateway.db"
    opened = await open_store(StoreConfig(url=f"sqlite:///{path}", sqlite_path=path))
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def postgres_store(pg_url: str) -> AsyncIterator[Store]:
    opened = await open_store(StoreConfig(url=pg_url))
    try:
        yield opened
    finally:
        await opened.aclose()


class TestSqliteMfaStore(MfaStoreContract):
    @pytest.fixture
    def store(self, sqlite_store: Store) -> Store:
        return sqlite_store


class TestPostgresMfaStore(MfaStoreContract):
    @pytest.fixture
    def store(self, postgres_store: Store) -> Store:
        return postgres_store
