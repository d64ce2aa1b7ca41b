"""The behaviour every `Store` backend must show, written once against the protocol.

A backend's test module subclasses `StoreContract` and supplies a `store` fixture (an opened, empty
store). Must not: import a database driver or reach past the `Store` protocol.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from gateway.config import Rate
from gateway.core.errors import Conflict
from gateway.store import EmailToken, NewMail, SessionRecord, Store, UserRecord

__all__ = ["StoreContract"]

T0 = 1_700_000_000.0
GRACE = 10.0
REMEMBER_TTL = 1000.0
SESSION_TTL = 100.0
ABSOLUTE_TTL = 5000.0


def _hash(label: str) -> str:
    """A stand-in for a refresh-token hash: the store treats it as an opaque unique string."""
    return f"hash-{label}-{uuid.uuid4().hex}"


async def _user(store: Store, email: str = "alice@example.com", *, now: float = T0) -> UserRecord:
    return await store.create_user(
        user_id=str(uuid.uuid4()), email=email, email_key=email.lower(), password_hash="argon2-hash", now=now
    )


async def _session(
    store: Store,
    user: UserRecord,
    *,
    now: float = T0,
    remember_me: bool = False,
    ttl: float | None = None,
    absolute: float = ABSOLUTE_TTL,
    user_agent: str = "pytest",
) -> tuple[SessionRecord, str]:
    """A new session and the hash of its first refresh token."""
    ttl = (REMEMBER_TTL if remember_me else SESSION_TTL) if ttl is None else ttl
    record = SessionRecord(
        id=str(uuid.uuid4()),
        user_id=user.id,
        created_at=now,
        last_used_at=now,
        expires_at=min(now + ttl, now + absolute),
        absolute_expires_at=now + absolute,
        remember_me=remember_me,
        user_agent=user_agent,
        ip="192.0.2.7",
    )
    token_hash = _hash("first")
    await store.create_session(record, token_hash=token_hash)
    return record, token_hash


async def _rotate(store: Store, token_hash: str, successor_hash: str, *, now: float, limit: Rate | None = None) -> Any:
    return await store.rotate(
        token_hash=token_hash,
        successor_hash=successor_hash,
        now=now,
        grace_s=GRACE,
        remember_ttl_s=REMEMBER_TTL,
        session_ttl_s=SESSION_TTL,
        limit=limit,
    )


def _mail(recipient: str) -> NewMail:
    return NewMail(sender="gw@example.com", recipient=recipient, message=f"To: {recipient}\r\n\r\nhello {uuid.uuid4()}\r\n")


class StoreContract:
    """Subclasses provide `store`; every test here must pass on every backend."""

    # -- users ---------------------------------------------------------------------------------

    async def test_create_user_then_get_by_email_key_and_id_returns_it(self, store: Store) -> None:
        created = await store.create_user(
            user_id="u-1", email="Alice@Example.com", email_key="alice@example.com", password_hash="h", now=T0
        )
        assert created == UserRecord(
            id="u-1", email="Alice@Example.com", email_key="alice@example.com", password_hash="h", disabled=False, created_at=T0
        )
        assert await store.get_user(email_key="alice@example.com") == created
        assert await store.get_user(user_id="u-1") == created

    async def test_get_user_unknown_returns_none(self, store: Store) -> None:
        await _user(store)
        assert await store.get_user(email_key="nobody@example.com") is None
        assert await store.get_user(user_id="no-such-id") is None

    async def test_list_users_returns_every_user_oldest_first(self, store: Store) -> None:
        b = await _user(store, "b@example.com", now=T0 + 5)
        a = await _user(store, "a@example.com", now=T0)
        c = await _user(store, "c@example.com", now=T0 + 9)
        assert [u.id for u in await store.list_users()] == [a.id, b.id, c.id]

    async def test_create_user_duplicate_email_key_raises_conflict(self, store: Store) -> None:
        await _user(store, "alice@example.com")
        with pytest.raises(Conflict):
            await store.create_user(
                user_id="other", email="ALICE@example.com", email_key="alice@example.com", password_hash="h", now=T0
            )
        assert len(await store.list_users()) == 1

    async def test_update_user_password_revokes_sessions_and_returns_ids(self, store: Store) -> None:
        user = await _user(store)
        other = await _user(store, "bob@example.com")
        s1, _ = await _session(store, user)
        s2, _ = await _session(store, user)
        s3, _ = await _session(store, other)
        revoked = await store.update_user(user.id, now=T0 + 1, password_hash="new-hash")
        assert sorted(revoked) == sorted([s1.id, s2.id])
        assert (await store.get_user(user_id=user.id)).password_hash == "new-hash"  # type: ignore[union-attr]
        for sid in (s1.id, s2.id):
            found = await store.find_session(session_id=sid)
            assert found is not None and found.revoked_at == T0 + 1
        still = await store.find_session(session_id=s3.id)
        assert still is not None and still.revoked_at is None
        logged = [e.session_id for e in await store.revocations_since(0)]
        assert sorted(logged) == sorted([s1.id, s2.id])

    async def test_update_user_disable_revokes_sessions_and_sets_flag(self, store: Store) -> None:
        user = await _user(store)
        s1, _ = await _session(store, user)
        assert await store.update_user(user.id, now=T0 + 1, disabled=True) == [s1.id]
        assert (await store.get_user(user_id=user.id)).disabled is True  # type: ignore[union-attr]

    async def test_rehash_password_only_replaces_the_hash_it_was_given(self, store: Store) -> None:
        user = await _user(store)
        s1, _ = await _session(store, user)
        old = user.password_hash
        assert await store.rehash_password(user.id, old_hash=old, new_hash="stronger", now=T0 + 1) is True
        assert (await store.get_user(user_id=user.id)).password_hash == "stronger"  # type: ignore[union-attr]
        # a password changed meanwhile is never overwritten by a re-hash of the old one
        assert await store.rehash_password(user.id, old_hash=old, new_hash="stale", now=T0 + 2) is False
        assert (await store.get_user(user_id=user.id)).password_hash == "stronger"  # type: ignore[union-attr]
        found = await store.find_session(session_id=s1.id)
        assert found is not None and found.revoked_at is None

    async def test_update_user_enable_revokes_nothing(self, store: Store) -> None:
        user = await _user(store)
        await store.update_user(user.id, now=T0 + 1, disabled=True)
        s1, _ = await _session(store, user, now=T0 + 2)
        assert await store.update_user(user.id, now=T0 + 3, disabled=False) == []
        assert (await store.get_user(user_id=user.id)).disabled is False  # type: ignore[union-attr]
        found = await store.find_session(session_id=s1.id)
        assert found is not None and found.revoked_at is None

    async def test_update_user_already_revoked_sessions_not_returned_again(self, store: Store) -> None:
        user = await _user(store)
        s1, _ = await _session(store, user)
        s2, _ = await _session(store, user)
        await store.revoke(now=T0 + 1, reason="logout", session_id=s1.id)
        assert await store.update_user(user.id, now=T0 + 2, password_hash="x") == [s2.id]

    # -- sessions ------------------------------------------------------------------------------

    async def test_create_session_then_find_by_token_hash_and_id_returns_it(self, store: Store) -> None:
        user = await _user(store)
        record, token_hash = await _session(store, user, remember_me=True, user_agent="Firefox")
        assert await store.find_session(token_hash=token_hash) == record
        assert await store.find_session(session_id=record.id) == record

    async def test_session_amr_and_idp_survive_store_and_rotation(self, store: Store) -> None:
        user = await _user(store)
        record = SessionRecord(
            id=str(uuid.uuid4()), user_id=user.id, created_at=T0, last_used_at=T0, expires_at=T0 + SESSION_TTL,
            absolute_expires_at=T0 + ABSOLUTE_TTL, remember_me=False, user_agent="", ip="", amr=("pwd", "otp", "mfa"), idp="corp",
        )  # fmt: skip
        first = _hash("amr")
        await store.create_session(record, token_hash=first)
        assert await store.find_session(session_id=record.id) == record
        outcome = await _rotate(store, first, _hash("amr2"), now=T0 + 1)
        assert outcome.kind == "rotated", outcome
        assert (outcome.session.amr, outcome.session.idp) == (("pwd", "otp", "mfa"), "corp")

    async def test_find_session_unknown_returns_none(self, store: Store) -> None:
        user = await _user(store)
        await _session(store, user)
        assert await store.find_session(token_hash=_hash("nope")) is None
        assert await store.find_session(session_id="no-such-session") is None

    async def test_find_session_by_rotated_token_hash_returns_session(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        second = _hash("second")
        await _rotate(store, first, second, now=T0 + 1)
        old = await store.find_session(token_hash=first)
        new = await store.find_session(token_hash=second)
        assert old is not None and new is not None and old.id == new.id == record.id

    async def test_find_session_revoked_returns_it_with_revocation(self, store: Store) -> None:
        user = await _user(store)
        record, token_hash = await _session(store, user)
        await store.revoke(now=T0 + 3, reason="logout", session_id=record.id)
        found = await store.find_session(token_hash=token_hash)
        assert found is not None and found.revoked_at == T0 + 3 and found.revoked_reason == "logout"

    # -- rotate --------------------------------------------------------------------------------

    async def test_rotate_current_token_is_rotated_and_slides_expiry(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        out = await _rotate(store, first, _hash("second"), now=T0 + 50)
        assert out.kind == "rotated"
        assert out.session.id == record.id and out.user.id == user.id
        assert out.session.last_used_at == T0 + 50
        assert out.session.expires_at == T0 + 50 + SESSION_TTL
        stored = await store.find_session(session_id=record.id)
        assert stored is not None and stored.expires_at == T0 + 50 + SESSION_TTL and stored.last_used_at == T0 + 50

    async def test_rotate_remember_me_slides_by_remember_ttl(self, store: Store) -> None:
        user = await _user(store)
        _, first = await _session(store, user, remember_me=True)
        out = await _rotate(store, first, _hash("second"), now=T0 + 50)
        assert out.kind == "rotated" and out.session.expires_at == T0 + 50 + REMEMBER_TTL

    async def test_rotate_sliding_expiry_capped_at_absolute(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user, absolute=150.0)
        out = await _rotate(store, first, _hash("second"), now=T0 + 90)
        assert out.kind == "rotated"
        assert out.session.expires_at == record.absolute_expires_at == T0 + 150
        stored = await store.find_session(session_id=record.id)
        assert stored is not None and stored.expires_at == T0 + 150

    async def test_rotate_successor_rotates_again(self, store: Store) -> None:
        user = await _user(store)
        _, first = await _session(store, user)
        second, third = _hash("second"), _hash("third")
        assert (await _rotate(store, first, second, now=T0 + 1)).kind == "rotated"
        assert (await _rotate(store, second, third, now=T0 + 2)).kind == "rotated"
        assert (await _rotate(store, third, _hash("fourth"), now=T0 + 3)).kind == "rotated"

    async def test_rotate_old_token_within_grace_with_current_child_is_twin(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        second = _hash("second")
        await _rotate(store, first, second, now=T0 + 1)
        out = await _rotate(store, first, second, now=T0 + 1 + GRACE - 1)
        assert out.kind == "twin"
        assert out.session.id == record.id and out.user.id == user.id
        # the twin answer issues nothing new: the successor is still the one current token
        assert (await _rotate(store, second, _hash("third"), now=T0 + 1 + GRACE - 1)).kind == "rotated"

    async def test_rotate_old_token_after_grace_is_reused_and_revokes_session(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        other, other_hash = await _session(store, user)
        second = _hash("second")
        await _rotate(store, first, second, now=T0 + 1)
        out = await _rotate(store, first, second, now=T0 + 1 + GRACE + 1)
        assert out.kind == "reused"
        assert out.session.id == record.id and out.user.id == user.id
        stored = await store.find_session(session_id=record.id)
        assert stored is not None and stored.revoked_at == T0 + 1 + GRACE + 1
        assert [e.session_id for e in await store.revocations_since(0)] == [record.id]
        # the family is dead: its current token no longer rotates
        assert (await _rotate(store, second, _hash("third"), now=T0 + 20)).kind == "invalid"
        # the same user's other session is untouched
        assert (await _rotate(store, other_hash, _hash("o2"), now=T0 + 20)).kind == "rotated"

    async def test_rotate_old_token_within_grace_after_child_rotated_is_reused(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        second, third = _hash("second"), _hash("third")
        await _rotate(store, first, second, now=T0 + 1)
        await _rotate(store, second, third, now=T0 + 2)
        out = await _rotate(store, first, second, now=T0 + 3)
        assert out.kind == "reused"
        stored = await store.find_session(session_id=record.id)
        assert stored is not None and stored.revoked_at is not None
        assert [e.session_id for e in await store.revocations_since(0)] == [record.id]

    async def test_rotate_old_token_with_other_successor_is_reused(self, store: Store) -> None:
        user = await _user(store)
        _, first = await _session(store, user)
        await _rotate(store, first, _hash("second"), now=T0 + 1)
        out = await _rotate(store, first, _hash("forged"), now=T0 + 2)
        assert out.kind == "reused"

    async def test_rotate_unknown_token_is_invalid(self, store: Store) -> None:
        user = await _user(store)
        await _session(store, user)
        out = await _rotate(store, _hash("unknown"), _hash("x"), now=T0 + 1)
        assert out.kind == "invalid" and out.session is None
        assert await store.revocations_since(0) == []

    async def test_rotate_expired_session_is_invalid(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        out = await _rotate(store, first, _hash("x"), now=record.expires_at + 1)
        assert out.kind == "invalid"
        assert await store.find_session(token_hash=first) == record

    async def test_rotate_past_absolute_expiry_is_invalid(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user, remember_me=True, ttl=10_000.0, absolute=100.0)
        out = await _rotate(store, first, _hash("x"), now=record.absolute_expires_at + 1)
        assert out.kind == "invalid"

    async def test_rotate_revoked_session_is_invalid(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        await store.revoke(now=T0 + 1, reason="logout", session_id=record.id)
        out = await _rotate(store, first, _hash("x"), now=T0 + 2)
        assert out.kind == "invalid"
        assert len(await store.revocations_since(0)) == 1

    async def test_rotate_disabled_user_is_invalid(self, store: Store) -> None:
        user = await _user(store)
        _, first = await _session(store, user)
        await store.update_user(user.id, now=T0 + 1, disabled=True)
        assert (await _rotate(store, first, _hash("x"), now=T0 + 2)).kind == "invalid"

    async def test_rotate_invalid_token_rotates_nothing(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        await _rotate(store, first, _hash("x"), now=record.expires_at + 1)
        stored = await store.find_session(session_id=record.id)
        assert stored == record

    async def test_rotate_50_concurrent_same_token_one_rotated_rest_twins(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        second = _hash("second")
        outcomes = await asyncio.gather(*(_rotate(store, first, second, now=T0 + 1) for _ in range(50)))
        kinds = [o.kind for o in outcomes]
        assert kinds.count("rotated") == 1
        assert kinds.count("twin") == 49
        assert {o.session.id for o in outcomes} == {record.id}
        stored = await store.find_session(session_id=record.id)
        assert stored is not None and stored.revoked_at is None
        assert (await _rotate(store, second, _hash("third"), now=T0 + 2)).kind == "rotated"

    async def test_rotate_limit_allows_count_then_limited_and_changes_nothing(self, store: Store) -> None:
        user = await _user(store)
        record, token = await _session(store, user)
        rate = Rate(count=2, period_s=60)
        for i in range(2):
            nxt = _hash(f"n{i}")
            assert (await _rotate(store, token, nxt, now=T0 + 1, limit=rate)).kind == "rotated"
            token = nxt
        before = await store.find_session(session_id=record.id)
        refused = _hash("refused")
        out = await _rotate(store, token, refused, now=T0 + 1, limit=rate)
        assert out.kind == "limited" and 1 <= out.retry_after <= 30
        assert out.session.id == record.id and out.user.id == user.id
        assert await store.find_session(session_id=record.id) == before
        assert await store.find_session(token_hash=refused) is None
        # the refused token is still current: once the limit allows, it rotates, not "reused"
        assert (await _rotate(store, token, refused, now=T0 + 31, limit=rate)).kind == "rotated"

    async def test_rotate_limit_is_per_session(self, store: Store) -> None:
        user = await _user(store)
        _, first = await _session(store, user)
        _, other = await _session(store, user)
        rate = Rate(count=1, period_s=60)
        assert (await _rotate(store, first, _hash("a"), now=T0 + 1, limit=rate)).kind == "rotated"
        assert (await _rotate(store, other, _hash("b"), now=T0 + 1, limit=rate)).kind == "rotated"

    async def test_rotate_limit_refusal_of_old_token_does_not_revoke(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        rate = Rate(count=1, period_s=60)
        await _rotate(store, first, _hash("second"), now=T0 + 1, limit=rate)
        out = await _rotate(store, first, _hash("forged"), now=T0 + 2, limit=rate)
        assert out.kind == "limited"
        stored = await store.find_session(session_id=record.id)
        assert stored is not None and stored.revoked_at is None
        assert await store.revocations_since(0) == []

    async def test_rotate_limit_counts_before_other_checks_but_not_for_unknown(self, store: Store) -> None:
        user = await _user(store)
        record, first = await _session(store, user)
        await store.revoke(now=T0 + 1, reason="logout", session_id=record.id)
        rate = Rate(count=1, period_s=60)
        assert (await _rotate(store, first, _hash("x"), now=T0 + 2, limit=rate)).kind == "invalid"
        assert (await _rotate(store, first, _hash("x"), now=T0 + 2, limit=rate)).kind == "limited"
        for _ in range(3):
            assert (await _rotate(store, _hash("unknown"), _hash("x"), now=T0 + 2, limit=rate)).kind == "invalid"

    async def test_rotate_50_concurrent_with_limit_one_rotated_rest_twins_or_limited(self, store: Store) -> None:
        user = await _user(store)
        _, first = await _session(store, user)
        second = _hash("second")
        rate = Rate(count=10, period_s=60)
        outcomes = await asyncio.gather(*(_rotate(store, first, second, now=T0 + 1, limit=rate) for _ in range(50)))
        assert sorted(o.kind for o in outcomes) == ["limited"] * 40 + ["rotated"] + ["twin"] * 9

    # -- shared rate limits --------------------------------------------------------------------

    async def test_take_limit_allows_count_at_once_then_waits_one_interval(self, store: Store) -> None:
        rate = Rate(count=3, period_s=60)
        assert [await store.take_limit(["k"], rate=rate, now=T0) for _ in range(3)] == [0, 0, 0]
        wait = await store.take_limit(["k"], rate=rate, now=T0)
        assert wait == 20
        assert await store.take_limit(["k"], rate=rate, now=T0 + 19) > 0
        assert await store.take_limit(["k"], rate=rate, now=T0 + 20) == 0
        assert await store.take_limit(["k"], rate=rate, now=T0 + 20) > 0

    async def test_take_limit_keys_are_independent(self, store: Store) -> None:
        rate = Rate(count=1, period_s=60)
        assert await store.take_limit(["a"], rate=rate, now=T0) == 0
        assert await store.take_limit(["b"], rate=rate, now=T0) == 0
        assert await store.take_limit(["a"], rate=rate, now=T0) > 0

    async def test_take_limit_refused_on_one_key_takes_nothing_from_the_others(self, store: Store) -> None:
        rate = Rate(count=2, period_s=60)
        assert await store.take_limit(["ip", "email"], rate=rate, now=T0) == 0
        assert await store.take_limit(["email"], rate=rate, now=T0) == 0
        assert await store.take_limit(["ip", "email"], rate=rate, now=T0) > 0  # email is spent
        assert await store.take_limit(["ip"], rate=rate, now=T0) == 0  # ip still had one left

    async def test_take_limit_after_a_full_period_allows_count_again(self, store: Store) -> None:
        rate = Rate(count=2, period_s=60)
        for _ in range(2):
            assert await store.take_limit(["k"], rate=rate, now=T0) == 0
        assert await store.take_limit(["k"], rate=rate, now=T0 + 60) == 0
        assert await store.take_limit(["k"], rate=rate, now=T0 + 60) == 0
        assert await store.take_limit(["k"], rate=rate, now=T0 + 60) > 0

    async def test_give_back_limit_returns_one_hit(self, store: Store) -> None:
        rate = Rate(count=1, period_s=60)
        assert await store.take_limit(["a", "b"], rate=rate, now=T0) == 0
        await store.give_back_limit(["a", "b"], rate=rate)
        assert await store.take_limit(["a", "b"], rate=rate, now=T0) == 0
        assert await store.take_limit(["a"], rate=rate, now=T0) > 0
        await store.give_back_limit(["never-seen"], rate=rate)

    async def test_take_limit_100_concurrent_allow_exactly_count(self, store: Store) -> None:
        rate = Rate(count=7, period_s=3600)
        waits = await asyncio.gather(*(store.take_limit(["ip:x", "email:y"], rate=rate, now=T0) for _ in range(100)))
        assert waits.count(0) == 7

    async def test_prune_forgets_limits_in_the_past(self, store: Store) -> None:
        rate = Rate(count=1, period_s=60)
        assert await store.take_limit(["k"], rate=rate, now=T0) == 0
        await store.prune(now=T0 + 61, revocations_before=T0)
        assert await store.take_limit(["k"], rate=rate, now=T0) == 0

    # -- revoke and listing --------------------------------------------------------------------

    async def test_revoke_one_session_returns_it_once(self, store: Store) -> None:
        user = await _user(store)
        s1, _ = await _session(store, user)
        s2, _ = await _session(store, user)
        assert await store.revoke(now=T0 + 1, reason="logout", session_id=s1.id) == [s1.id]
        assert await store.revoke(now=T0 + 2, reason="logout", session_id=s1.id) == []
        found = await store.find_session(session_id=s1.id)
        assert found is not None and found.revoked_at == T0 + 1 and found.revoked_reason == "logout"
        kept = await store.find_session(session_id=s2.id)
        assert kept is not None and kept.revoked_at is None

    async def test_revoke_unknown_session_returns_empty(self, store: Store) -> None:
        assert await store.revoke(now=T0, reason="logout", session_id="no-such-session") == []
        assert await store.revocations_since(0) == []

    async def test_revoke_all_of_user_returns_only_live_ones_of_that_user(self, store: Store) -> None:
        user = await _user(store)
        other = await _user(store, "bob@example.com")
        s1, _ = await _session(store, user)
        s2, _ = await _session(store, user)
        s3, _ = await _session(store, user)
        o1, _ = await _session(store, other)
        await store.revoke(now=T0 + 1, reason="logout", session_id=s1.id)
        revoked = await store.revoke(now=T0 + 2, reason="logout_all", user_id=user.id)
        assert sorted(revoked) == sorted([s2.id, s3.id])
        assert await store.list_sessions(user.id, now=T0 + 3) == []
        assert [s.id for s in await store.list_sessions(other.id, now=T0 + 3)] == [o1.id]

    async def test_list_sessions_only_live_newest_first(self, store: Store) -> None:
        user = await _user(store)
        other = await _user(store, "bob@example.com")
        old, _ = await _session(store, user, now=T0, ttl=10.0)  # expired by T0 + 20
        revoked, _ = await _session(store, user, now=T0 + 1)
        live1, _ = await _session(store, user, now=T0 + 2)
        live2, _ = await _session(store, user, now=T0 + 3)
        await _session(store, other, now=T0 + 4)
        await store.revoke(now=T0 + 5, reason="logout", session_id=revoked.id)
        listed = await store.list_sessions(user.id, now=T0 + 20)
        assert [s.id for s in listed] == [live2.id, live1.id]
        assert listed[1] == live1
        assert old.id not in {s.id for s in listed}

    async def test_count_live_sessions_skips_revoked_and_expired(self, store: Store) -> None:
        user = await _user(store)
        await _session(store, user, now=T0, ttl=10.0)  # expired by T0 + 20
        revoked, _ = await _session(store, user, now=T0 + 1)
        await _session(store, user, now=T0 + 2)
        await store.revoke(now=T0 + 5, reason="logout", session_id=revoked.id)
        assert await store.count_live_sessions(now=T0 + 20) == 1
        assert await store.count_live_sessions(now=T0 + 6) == 2

    async def test_revocations_since_in_order_and_after_seq(self, store: Store) -> None:
        user = await _user(store)
        sessions = [(await _session(store, user))[0] for _ in range(4)]
        for i, s in enumerate(sessions):
            await store.revoke(now=T0 + 10 + i, reason="logout", session_id=s.id)
        events = await store.revocations_since(0)
        assert [e.session_id for e in events] == [s.id for s in sessions]
        assert [e.revoked_at for e in events] == [T0 + 10, T0 + 11, T0 + 12, T0 + 13]
        seqs = [e.seq for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        later = await store.revocations_since(events[1].seq)
        assert [e.session_id for e in later] == [s.id for s in sessions[2:]]
        assert await store.revocations_since(events[-1].seq) == []

    async def test_revocations_since_not_before_filters_older(self, store: Store) -> None:
        user = await _user(store)
        s1, _ = await _session(store, user)
        s2, _ = await _session(store, user)
        await store.revoke(now=T0 + 10, reason="logout", session_id=s1.id)
        await store.revoke(now=T0 + 20, reason="logout", session_id=s2.id)
        events = await store.revocations_since(0, not_before=T0 + 15)
        assert [e.session_id for e in events] == [s2.id]

    # -- prune ---------------------------------------------------------------------------------

    async def test_prune_deletes_past_absolute_and_old_revocations(self, store: Store) -> None:
        user = await _user(store)
        dead, dead_hash = await _session(store, user, now=T0, absolute=100.0)
        live, live_hash = await _session(store, user, now=T0, remember_me=True, ttl=10_000.0, absolute=10_000.0)
        gone, _ = await _session(store, user)
        kept, _ = await _session(store, user)
        await store.revoke(now=T0 + 10, reason="logout", session_id=gone.id)
        await store.revoke(now=T0 + 50, reason="logout", session_id=kept.id)
        deleted = await store.prune(now=T0 + 200, revocations_before=T0 + 30)
        assert deleted == 1
        assert await store.find_session(session_id=dead.id) is None
        assert await store.find_session(token_hash=dead_hash) is None
        assert await store.find_session(token_hash=live_hash) == live
        assert [e.session_id for e in await store.revocations_since(0)] == [kept.id]

    async def test_prune_nothing_to_do_returns_zero(self, store: Store) -> None:
        user = await _user(store)
        record, _ = await _session(store, user)
        assert await store.prune(now=T0 + 1, revocations_before=T0) == 0
        assert await store.find_session(session_id=record.id) == record

    async def test_ping_answers(self, store: Store) -> None:
        await store.ping()

    # -- federated login -----------------------------------------------------------------------

    async def test_link_identity_then_find_returns_user_id(self, store: Store) -> None:
        user = await _user(store)
        await store.link_identity(provider="corp", subject="sub-1", user_id=user.id, now=T0)
        assert await store.find_identity(provider="corp", subject="sub-1") == user.id
        assert await store.find_identity(provider="other", subject="sub-1") is None
        assert await store.find_identity(provider="corp", subject="sub-2") is None

    async def test_link_identity_twice_raises_conflict(self, store: Store) -> None:
        a, b = await _user(store, "a@example.com"), await _user(store, "b@example.com")
        await store.link_identity(provider="corp", subject="sub-1", user_id=a.id, now=T0)
        with pytest.raises(Conflict):
            await store.link_identity(provider="corp", subject="sub-1", user_id=b.id, now=T0)
        assert await store.find_identity(provider="corp", subject="sub-1") == a.id

    async def test_federated_sessions_match_by_subject_sid_or_both(self, store: Store) -> None:
        user = await _user(store)
        one, _ = await _session(store, user)
        two, _ = await _session(store, user, now=T0 + 1)
        other, _ = await _session(store, user, now=T0 + 2)
        await store.record_federated_session(session_id=one.id, provider="corp", subject="s", sid="sid-1")
        await store.record_federated_session(session_id=two.id, provider="corp", subject="s", sid="sid-2")
        await store.record_federated_session(session_id=other.id, provider="else", subject="s", sid="sid-1")
        find = store.federated_sessions
        assert await find(provider="corp", subject="s", created_before=T0 + 9, now=T0 + 3) == [one.id, two.id]
        assert await find(provider="corp", sid="sid-1", created_before=T0 + 9, now=T0 + 3) == [one.id]
        assert await find(provider="corp", subject="s", sid="sid-2", created_before=T0 + 9, now=T0 + 3) == [two.id]
        assert await find(provider="corp", subject="x", sid="sid-2", created_before=T0 + 9, now=T0 + 3) == []
        assert await find(provider="corp", created_before=T0 + 9, now=T0 + 3) == []

    async def test_federated_sessions_skip_revoked_and_later_sessions(self, store: Store) -> None:
        user = await _user(store)
        old, _ = await _session(store, user)
        revoked, _ = await _session(store, user)
        later, _ = await _session(store, user, now=T0 + 50)
        for s in (old, revoked, later):
            await store.record_federated_session(session_id=s.id, provider="corp", subject="s", sid="")
        await store.revoke(now=T0 + 1, reason="test", session_id=revoked.id)
        assert await store.federated_sessions(provider="corp", subject="s", created_before=T0 + 10, now=T0 + 51) == [old.id]

    # -- authorization: roles and the grant-change log -------------------------------------------

    async def test_roles_new_user_has_none_at_version_zero(self, store: Store) -> None:
        user = await _user(store)
        assert (user.roles, user.roles_version) == ((), 0)
        got = await store.get_user(user_id=user.id)
        assert got is not None and (got.roles, got.roles_version) == ((), 0)

    async def test_roles_set_replaces_sorts_dedups_and_bumps_version(self, store: Store) -> None:
        user = await _user(store)
        updated = await store.set_user_roles(user.id, ("ops", "admin", "ops"), now=T0 + 1)
        assert updated is not None and (updated.roles, updated.roles_version) == (("admin", "ops"), 1)
        again = await store.set_user_roles(user.id, ("auditor",), now=T0 + 2)
        assert again is not None and (again.roles, again.roles_version) == (("auditor",), 2)
        got = await store.get_user(email_key=user.email_key)
        assert got is not None and (got.roles, got.roles_version) == (("auditor",), 2)
        assert [u.roles for u in await store.list_users()] == [("auditor",)]

    async def test_roles_same_set_changes_nothing_and_logs_nothing(self, store: Store) -> None:
        user = await _user(store)
        await store.set_user_roles(user.id, ("admin",), now=T0 + 1)
        same = await store.set_user_roles(user.id, ("admin",), now=T0 + 2)
        assert same is not None and same.roles_version == 1
        assert [(c.subject, c.version) for c in await store.access_changes_since(0)] == [(user.id, 1)]

    async def test_roles_unknown_user_is_none(self, store: Store) -> None:
        assert await store.set_user_roles("no-such-user", ("admin",), now=T0) is None
        assert await store.access_changes_since(0) == []

    async def test_roles_changes_logged_in_order_after_seq(self, store: Store) -> None:
        a, b = await _user(store, "a@example.com"), await _user(store, "b@example.com")
        await store.set_user_roles(a.id, ("x",), now=T0 + 1)
        await store.set_user_roles(b.id, ("y",), now=T0 + 2)
        await store.set_user_roles(a.id, (), now=T0 + 3)
        changes = await store.access_changes_since(0)
        assert [(c.subject, c.version, c.changed_at) for c in changes] == [(a.id, 1, T0 + 1), (b.id, 1, T0 + 2), (a.id, 2, T0 + 3)]
        assert [c.seq for c in changes] == sorted(c.seq for c in changes)
        assert [c.subject for c in await store.access_changes_since(changes[0].seq)] == [b.id, a.id]
        assert [c.subject for c in await store.access_changes_since(0, not_before=T0 + 2.5)] == [a.id]

    async def test_roles_rotation_returns_current_roles(self, store: Store) -> None:
        user = await _user(store)
        _, token_hash = await _session(store, user)
        await store.set_user_roles(user.id, ("admin",), now=T0 + 1)
        outcome = await _rotate(store, token_hash, _hash("next"), now=T0 + 2)
        assert outcome.kind == "rotated" and (outcome.user.roles, outcome.user.roles_version) == (("admin",), 1)

    async def test_roles_concurrent_changes_each_get_own_version(self, store: Store) -> None:
        user = await _user(store)
        results = await asyncio.gather(*[store.set_user_roles(user.id, (f"r{i}",), now=T0 + 1) for i in range(5)])
        versions = sorted(r.roles_version for r in results if r is not None)
        assert versions == [1, 2, 3, 4, 5]
        assert sorted(c.version for c in await store.access_changes_since(0)) == [1, 2, 3, 4, 5]

    async def test_roles_prune_drops_old_grant_changes(self, store: Store) -> None:
        user = await _user(store)
        await store.set_user_roles(user.id, ("a",), now=T0 + 10)
        await store.set_user_roles(user.id, ("b",), now=T0 + 50)
        await store.prune(now=T0 + 60, revocations_before=T0 + 30)
        assert [c.version for c in await store.access_changes_since(0)] == [2]

    # -- machine clients -----------------------------------------------------------------------------

    async def test_clients_create_get_list(self, store: Store) -> None:
        from gateway.store import ClientRecord

        a = ClientRecord(id="cl_a", name="billing", secret_hash="h-a", scopes=("billing.read", "billing.write"), created_at=T0)
        b = ClientRecord(id="cl_b", name="no scopes", secret_hash="h-b", scopes=(), created_at=T0 + 1)
        await store.create_client(a)
        await store.create_client(b)
        assert await store.get_client("cl_a") == a
        assert await store.get_client("cl_b") == b
        assert await store.get_client("cl_nope") is None
        assert await store.list_clients() == [a, b]

    async def test_clients_duplicate_id_conflicts(self, store: Store) -> None:
        from gateway.store import ClientRecord

        record = ClientRecord(id="cl_a", name="x", secret_hash="h", scopes=(), created_at=T0)
        await store.create_client(record)
        with pytest.raises(Conflict):
            await store.create_client(record)

    async def test_clients_remove_deletes_and_logs_once(self, store: Store) -> None:
        from gateway.store import ClientRecord

        await store.create_client(ClientRecord(id="cl_a", name="x", secret_hash="h", scopes=("s",), created_at=T0))
        assert await store.remove_client("cl_a", now=T0 + 5, version=2**62) is True
        assert await store.get_client("cl_a") is None
        assert await store.remove_client("cl_a", now=T0 + 6, version=2**62) is False
        changes = await store.access_changes_since(0)
        assert [(c.subject, c.version, c.changed_at) for c in changes] == [("cl_a", 2**62, T0 + 5)]
    # -- accounts and the mail outbox (issue 12) -----------------------------------------------

    async def test_signup_user_is_unverified_with_token_and_mail(self, store: Store) -> None:
        created = await store.signup_user(
            user_id="u-s", email="New@Example.com", email_key="new@example.com", password_hash="h", now=T0,
            token=EmailToken(_hash("v"), "verify", T0 + 100), mail=_mail("new@example.com"),
        )  # fmt: skip
        assert created is True
        user = await store.get_user(email_key="new@example.com")
        assert user is not None and user.email == "New@Example.com"
        assert await store.unverified_user_ids() == {"u-s"}
        assert await store.is_email_verified("u-s") is False
        claimed = await store.claim_mail(now=T0, lease_s=60, limit=10)
        assert [(m.recipient, m.attempts) for m in claimed] == [("new@example.com", 1)]

    async def test_signup_user_existing_email_writes_nothing(self, store: Store) -> None:
        existing = await _user(store, "taken@example.com")
        created = await store.signup_user(
            user_id="u-x", email="taken@example.com", email_key="taken@example.com", password_hash="h", now=T0,
            token=EmailToken(_hash("v"), "verify", T0 + 100), mail=_mail("taken@example.com"),
        )  # fmt: skip
        assert created is False
        assert await store.get_user(email_key="taken@example.com") == existing
        assert await store.unverified_user_ids() == set()
        assert await store.claim_mail(now=T0, lease_s=60, limit=10) == []

    async def test_users_made_by_create_user_are_verified(self, store: Store) -> None:
        user = await _user(store)
        assert await store.unverified_user_ids() == set()
        assert await store.is_email_verified(user.id) is True
        assert await store.is_email_verified("no-such-id") is False

    async def test_redeem_verify_token_once_verifies(self, store: Store) -> None:
        token = _hash("v")
        await store.signup_user(
            user_id="u-v", email="v@example.com", email_key="v@example.com", password_hash="h", now=T0,
            token=EmailToken(token, "verify", T0 + 100), mail=_mail("v@example.com"),
        )  # fmt: skip
        assert await store.redeem_email_token(token, kind="reset", now=T0 + 1) is None  # wrong kind
        assert await store.redeem_email_token(token, kind="verify", now=T0 + 1) == ("u-v", [])
        assert await store.unverified_user_ids() == set()
        assert await store.redeem_email_token(token, kind="verify", now=T0 + 2) is None

    async def test_redeem_expired_token_is_none(self, store: Store) -> None:
        user = await _user(store)
        token = _hash("r")
        await store.issue_email_token(user.id, token=EmailToken(token, "reset", T0 + 10), mail=_mail(user.email), now=T0)
        assert await store.redeem_email_token(token, kind="reset", now=T0 + 10, password_hash="new") is None

    async def test_newer_token_voids_older_of_same_kind_only(self, store: Store) -> None:
        user = await _user(store)
        old_reset, new_reset, verify = _hash("r1"), _hash("r2"), _hash("v")
        await store.issue_email_token(user.id, token=EmailToken(old_reset, "reset", T0 + 99), mail=_mail(user.email), now=T0)
        await store.issue_email_token(user.id, token=EmailToken(verify, "verify", T0 + 99), mail=_mail(user.email), now=T0)
        await store.issue_email_token(user.id, token=EmailToken(new_reset, "reset", T0 + 99), mail=_mail(user.email), now=T0)
        assert await store.redeem_email_token(old_reset, kind="reset", now=T0 + 1, password_hash="x") is None
        assert await store.redeem_email_token(verify, kind="verify", now=T0 + 1) == (user.id, [])
        out = await store.redeem_email_token(new_reset, kind="reset", now=T0 + 1, password_hash="x")
        assert out is not None and out[0] == user.id

    async def test_redeem_reset_sets_password_and_revokes_every_session(self, store: Store) -> None:
        user = await _user(store)
        one, _ = await _session(store, user)
        two, _ = await _session(store, user)
        token = _hash("r")
        await store.issue_email_token(user.id, token=EmailToken(token, "reset", T0 + 99), mail=_mail(user.email), now=T0)
        out = await store.redeem_email_token(token, kind="reset", now=T0 + 1, password_hash="new-hash")
        assert out is not None and sorted(out[1]) == sorted([one.id, two.id])
        stored = await store.get_user(user_id=user.id)
        assert stored is not None and stored.password_hash == "new-hash"
        assert {e.session_id for e in await store.revocations_since(0)} == {one.id, two.id}

    async def test_redeem_token_of_disabled_user_is_none(self, store: Store) -> None:
        user = await _user(store)
        token = _hash("r")
        await store.issue_email_token(user.id, token=EmailToken(token, "reset", T0 + 99), mail=_mail(user.email), now=T0)
        await store.update_user(user.id, now=T0, disabled=True)
        assert await store.redeem_email_token(token, kind="reset", now=T0 + 1, password_hash="x") is None
        stored = await store.get_user(user_id=user.id)
        assert stored is not None and stored.password_hash == "argon2-hash"

    async def test_redeem_20_concurrent_same_token_one_wins(self, store: Store) -> None:
        user = await _user(store)
        token = _hash("r")
        await store.issue_email_token(user.id, token=EmailToken(token, "reset", T0 + 99), mail=_mail(user.email), now=T0)
        outs = await asyncio.gather(
            *(store.redeem_email_token(token, kind="reset", now=T0 + 1, password_hash=f"h{i}") for i in range(20))
        )
        assert sum(o is not None for o in outs) == 1

    async def test_set_email_verified(self, store: Store) -> None:
        await store.signup_user(
            user_id="u-m", email="m@example.com", email_key="m@example.com", password_hash="h", now=T0,
            token=EmailToken(_hash("v"), "verify", T0 + 100), mail=_mail("m@example.com"),
        )  # fmt: skip
        await store.set_email_verified("u-m", now=T0 + 1)
        assert await store.unverified_user_ids() == set()
        assert await store.is_email_verified("u-m") is True

    async def test_change_password_keeps_one_session_revokes_others(self, store: Store) -> None:
        user = await _user(store)
        keep, _ = await _session(store, user)
        other, _ = await _session(store, user)
        revoked = await store.change_password(user.id, password_hash="new", now=T0 + 1, keep_session_id=keep.id)
        assert revoked == [other.id]
        assert [s.id for s in await store.list_sessions(user.id, now=T0 + 1)] == [keep.id]
        stored = await store.get_user(user_id=user.id)
        assert stored is not None and stored.password_hash == "new"

    async def test_claim_mail_leases_each_mail_once_until_the_lease_expires(self, store: Store) -> None:
        for i in range(3):
            await store.enqueue_mail(_mail(f"r{i}@example.com"), now=T0)
        first = await store.claim_mail(now=T0, lease_s=60, limit=2)
        second = await store.claim_mail(now=T0 + 1, lease_s=60, limit=10)
        assert [m.recipient for m in first] == ["r0@example.com", "r1@example.com"]
        assert [m.recipient for m in second] == ["r2@example.com"]
        assert await store.claim_mail(now=T0 + 59, lease_s=60, limit=10) == []
        await store.mail_sent(first[0].id, now=T0 + 2)
        again = await store.claim_mail(now=T0 + 61, lease_s=60, limit=10)  # leases of 2 and 3 ran out
        assert [(m.recipient, m.attempts) for m in again] == [("r1@example.com", 2), ("r2@example.com", 2)]

    async def test_claim_mail_concurrent_claims_never_share_a_mail(self, store: Store) -> None:
        for i in range(30):
            await store.enqueue_mail(_mail(f"c{i}@example.com"), now=T0)
        batches = await asyncio.gather(*(store.claim_mail(now=T0, lease_s=60, limit=4) for _ in range(12)))
        ids = [m.id for batch in batches for m in batch]
        assert len(ids) == len(set(ids)) == 30

    async def test_mail_failed_retries_from_retry_at_or_never(self, store: Store) -> None:
        await store.enqueue_mail(_mail("a@example.com"), now=T0)
        await store.enqueue_mail(_mail("b@example.com"), now=T0)
        a, b = await store.claim_mail(now=T0, lease_s=60, limit=10)
        await store.mail_failed(a.id, now=T0 + 1, retry_at=T0 + 30, error="connection refused")
        await store.mail_failed(b.id, now=T0 + 1, retry_at=None, error="550 no such user")
        assert await store.claim_mail(now=T0 + 29, lease_s=60, limit=10) == []
        retried = await store.claim_mail(now=T0 + 30, lease_s=60, limit=10)
        assert [(m.recipient, m.attempts, m.message) for m in retried] == [("a@example.com", 2, a.message)]
        await store.mail_sent(a.id, now=T0 + 31)
        assert await store.claim_mail(now=T0 + 9999, lease_s=60, limit=10) == []  # b gave up, a is sent

    async def test_prune_after_a_week_keeps_mail_not_yet_delivered(self, store: Store) -> None:
        user = await _user(store)
        old = _hash("old")
        await store.issue_email_token(user.id, token=EmailToken(old, "reset", T0 + 10), mail=_mail("a@example.com"), now=T0)
        await store.enqueue_mail(_mail("b@example.com"), now=T0)
        sent, pending = await store.claim_mail(now=T0, lease_s=1, limit=10)
        await store.mail_sent(sent.id, now=T0)
        week = 7 * 86400
        await store.prune(now=T0 + 11 + week, revocations_before=T0)
        assert [m.id for m in await store.claim_mail(now=T0 + 11 + week, lease_s=60, limit=10)] == [pending.id]
