"""SessionService's rules without HTTP: a real SQLite store in tmp_path, a real KeyRing, a FakeClock.

The `/auth` endpoints are tested end to end in test_sessions_http.py; these tests pin the rules
themselves (lifetimes, limits, reuse, revocation callbacks, audit reasons) and are fast enough to be
the mutation run's yardstick for sessions.py (bench/mutation).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

import gateway.sessions.passwords
from gateway.core.errors import (
    BadRequest,
    Conflict,
    EmailNotVerified,
    InvalidCredentials,
    NoRoute,
    RateLimited,
    RefreshRejected,
    RefreshReused,
)
from gateway.sessions.service import SessionService, check_password, normalize_email
from gateway.store import UserRecord, open_store
from gateway.tokens.keyring import KeyRing
from tests.support import FakeClock, build_config

EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"


@dataclass
class Rig:
    service: SessionService
    clock: FakeClock
    revoked: list[list[str]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)

    async def login(self, email: str = EMAIL, password: str = PASSWORD, **kwargs: Any) -> Any:
        args: dict[str, Any] = {"remember_me": False, "user_agent": "ua", "ip": "192.0.2.1", **kwargs}
        return await self.service.login(email, password, **args)


async def _rig(tmp_path: Path, **tables: Any) -> AsyncIterator[Rig]:
    cfg = build_config(tmp_path, "http://127.0.0.1:1", **tables)
    store = await open_store(cfg.store)
    clock = FakeClock(1_700_000_000.0)
    rig: Rig
    service = SessionService(
        store=store, keys=KeyRing(cfg.tokens), config=cfg, clock=clock,
        on_revoke=lambda ids: rig.revoked.append(list(ids)), on_event=lambda e, r: rig.events.append((e, r)),
    )  # fmt: skip
    rig = Rig(service, clock)
    try:
        yield rig
    finally:
        await store.aclose()


# The session rules do not depend on argon2's cost, but at the gateway's 64 MiB x 3 passes every login
# here would take a quarter of a second; with the cheapest parameters the module runs in seconds, so the
# mutation run (bench/mutation sessions) can afford it. test_sessions_http.py checks the real parameters
# ($argon2id$v=19$m=65536,t=3,p=1$) end to end.
_CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(autouse=True)
def _cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.sessions.passwords, "_HASHER", _CHEAP)


@pytest.fixture(scope="module")
def known_hash() -> str:
    """PASSWORD hashed once for the module (argon2 verifies with the parameters stored in the hash)."""
    return _CHEAP.hash(PASSWORD)


async def _user(rig: Rig, email: str, password_hash: str) -> UserRecord:
    _, key = normalize_email(email)
    return await rig.service.store.create_user(
        user_id=str(uuid.uuid4()), email=email, email_key=key, password_hash=password_hash, now=rig.clock.now
    )


@pytest.fixture
async def rig(tmp_path: Path, known_hash: str) -> AsyncIterator[Rig]:
    tables = {
        "tokens": {"secret": "s" * 40, "access_ttl": "5m", "refresh_ttl": "30d", "session_ttl": "12h",
                   "absolute_ttl": "90d", "reuse_grace": "10s", "leeway": "0s"},
        "limits": {"login": "3/minute", "refresh": "5/minute"},
    }  # fmt: skip
    async for r in _rig(tmp_path, **tables):
        await _user(r, EMAIL, known_hash)
        yield r


# -- emails and passwords -----------------------------------------------------------------------


def test_normalize_email_trims_and_folds() -> None:
    # the local part as entered, the domain in its normal form (DNS names have no case)
    assert normalize_email("  Alice@Example.COM ") == ("Alice@example.com", "alice@example.com")
    # Fullwidth letters fold to ASCII (NFKC), so a look-alike cannot be a second account.
    assert normalize_email("ａｌｉｃｅ@example.com")[1] == "alice@example.com"
    assert normalize_email("STRASSE@example.com")[1] == normalize_email("strasse@example.com")[1]


@pytest.mark.parametrize(
    "bad",
    [None, 7, "", "alice", "@example.com", "alice@", "alice@localhost", "alice@.", "al ice@example.com",
     "alice@exa\u0000mple.com", "alice@exam\u200bple.com", "alice@exa\tmple.com", "a" * 243 + "@example.com"],
)  # fmt: skip
def test_normalize_email_refuses_what_is_not_an_address(bad: object) -> None:
    with pytest.raises(BadRequest):
        normalize_email(bad)


def test_normalize_email_length_limit_is_254() -> None:
    at_limit = "a" * 242 + "@example.com"
    assert len(at_limit) == 254
    assert normalize_email(at_limit)[0] == at_limit


def test_normalize_email_domain_needs_a_dot_inside() -> None:
    assert normalize_email("a@b.c")[1] == "a@b.c"
    with pytest.raises(BadRequest):
        normalize_email("a@..")


@pytest.mark.parametrize(
    ("password", "ok"), [("x" * 8, True), ("x" * 7, False), ("x" * 1024, True), ("x" * 1025, False)]
)
def test_check_password_bounds(password: str, ok: bool) -> None:
    if ok:
        assert check_password(password) == password
    else:
        with pytest.raises(BadRequest):
            check_password(password)


def test_check_password_must_be_a_string() -> None:
    with pytest.raises(BadRequest):
        check_password(12345678)


# -- users --------------------------------------------------------------------------------------


async def test_add_user_stores_the_trimmed_email_and_audits(rig: Rig) -> None:
    user = await rig.service.add_user("  Bob@Example.com ", "another password")
    assert (user.email, user.email_key, user.disabled) == ("Bob@example.com", "bob@example.com", False)
    assert user.created_at == rig.clock.now
    assert rig.events == [("user_created", "")]
    assert (await rig.service.get_user("BOB@example.com")).id == user.id
    with pytest.raises(Conflict):
        await rig.service.add_user("bob@EXAMPLE.com", "another password")


async def test_check_password_of_a_user(rig: Rig) -> None:
    user = await rig.service.get_user(EMAIL)
    assert await rig.service.check_password_of(user, PASSWORD) is True
    assert await rig.service.check_password_of(user, "wrong password!") is False


async def test_get_user_unknown_is_no_route(rig: Rig) -> None:
    with pytest.raises(NoRoute):
        await rig.service.get_user("nobody@example.com")


async def test_set_password_revokes_every_session_and_swaps_the_password(rig: Rig) -> None:
    first, second = await rig.login(), await rig.login()
    revoked = await rig.service.set_password(EMAIL, "a brand new password")
    assert sorted(revoked) == sorted([first.session.id, second.session.id])
    assert [sorted(ids) for ids in rig.revoked] == [sorted(revoked)]
    assert ("session_revoked", "password_changed") in rig.events
    with pytest.raises(InvalidCredentials):
        await rig.login()
    assert (await rig.login(password="a brand new password")).user.email == EMAIL


async def test_set_disabled_revokes_and_refuses_login_until_enabled(rig: Rig) -> None:
    issued = await rig.login()
    assert await rig.service.set_disabled(EMAIL, disabled=True) == [issued.session.id]
    assert rig.revoked == [[issued.session.id]]
    assert ("user_disabled", "") in rig.events and ("session_revoked", "user_disabled") in rig.events
    rig.events.clear()
    with pytest.raises(InvalidCredentials):
        await rig.login()
    assert rig.events == [("login_failure", "user_disabled")]
    assert await rig.service.set_disabled(EMAIL, disabled=False) == []
    assert rig.revoked == [[issued.session.id]]  # enabling revokes nothing
    assert ("user_enabled", "") in rig.events
    await rig.login()


# -- login --------------------------------------------------------------------------------------


async def test_login_opens_a_browser_session(rig: Rig) -> None:
    now = rig.clock.now
    issued = await rig.login(user_agent="x" * 300, ip="198.51.100.4")
    s = issued.session
    assert (s.created_at, s.last_used_at, s.expires_at) == (now, now, now + 12 * 3600)
    assert s.absolute_expires_at == now + 90 * 86400
    assert (s.remember_me, s.user_agent, s.ip, s.user_id) == (False, "x" * 256, "198.51.100.4", issued.user.id)
    assert issued.refresh_max_age is None and issued.expires_in == 300
    principal = rig.service.keys.verify_access_token(issued.access_token, now=now)
    assert (principal.sub, principal.sid, principal.email) == (issued.user.id, s.id, EMAIL)
    assert rig.events == [("login_success", "")]
    found = await rig.service.session_for_token(issued.refresh_token)
    assert found is not None and found.id == s.id


async def test_login_remember_me_uses_refresh_ttl(rig: Rig) -> None:
    issued = await rig.login(remember_me=True)
    assert issued.session.expires_at == rig.clock.now + 30 * 86400
    assert issued.refresh_max_age == 30 * 86400


async def test_login_lifetimes_capped_by_absolute_ttl(tmp_path: Path, known_hash: str) -> None:
    tokens = {"secret": "s" * 40, "access_ttl": "1h", "refresh_ttl": "30d", "absolute_ttl": "10m", "leeway": "0s"}
    async for r in _rig(tmp_path, tokens=tokens):
        await _user(r, EMAIL, known_hash)
        issued = await r.login(remember_me=True)
        assert issued.session.expires_at == issued.session.absolute_expires_at == r.clock.now + 600
        assert issued.refresh_max_age == 600
        assert issued.expires_in == 600  # the access token never outlives the session


@pytest.mark.parametrize("password", [None, "", 5, "x" * 1025])
async def test_login_malformed_password_is_bad_request_and_not_counted(rig: Rig, password: object) -> None:
    for _ in range(4):
        with pytest.raises(BadRequest):
            await rig.service.login(EMAIL, password, remember_me=False, user_agent="", ip="192.0.2.1")
    await rig.login()  # malformed requests did not use up the limit


async def test_login_failures_have_one_answer_and_their_own_reasons(rig: Rig) -> None:
    with pytest.raises(InvalidCredentials):
        await rig.login(password="wrong password!")
    with pytest.raises(InvalidCredentials):
        await rig.login("nobody@example.com", ip="192.0.2.2")
    assert rig.events == [("login_failure", "wrong_password"), ("login_failure", "unknown_email")]


async def test_login_failures_limited_per_address(rig: Rig) -> None:
    for i in range(3):
        with pytest.raises(InvalidCredentials):
            await rig.login(f"user{i}@example.com", ip="203.0.113.5")
    with pytest.raises(RateLimited) as info:
        await rig.login(ip="203.0.113.5")  # the right password: the limit is checked first
    # GCRA (limits live in the store): 3/minute frees one attempt every 20 s after the burst.
    assert info.value.retry_after == 20
    assert rig.events[-1] == ("login_failure", "rate_limited")
    await rig.login(ip="203.0.113.6")
    rig.clock.advance(19)
    with pytest.raises(RateLimited):
        await rig.login(ip="203.0.113.5")
    rig.clock.advance(1)
    await rig.login(ip="203.0.113.5")


async def test_login_failures_limited_per_email_key(rig: Rig) -> None:
    for i, spelling in enumerate(["alice@example.com", "ALICE@example.com", " Alice@Example.com "]):
        with pytest.raises(InvalidCredentials):
            await rig.login(spelling, password="wrong password!", ip=f"198.51.100.{i}")
    rig.clock.advance(5)
    with pytest.raises(RateLimited) as info:
        await rig.login(ip="198.51.100.9")
    assert info.value.retry_after == 15


async def test_login_success_gives_its_slot_back(rig: Rig) -> None:
    for _ in range(5):
        await rig.login()
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await rig.login(password="wrong password!")
    with pytest.raises(RateLimited):
        await rig.login()


async def test_set_limits_same_keeps_counts_looser_admits(rig: Rig) -> None:
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await rig.login(password="wrong password!")
    limits = rig.service.limits
    rig.service.set_limits(limits)
    with pytest.raises(RateLimited):
        await rig.login()
    from gateway.config import LimitsConfig, Rate

    rig.service.set_limits(LimitsConfig(login=Rate(count=3, period_s=3600), refresh=limits.refresh))
    await rig.login()


# -- refresh ------------------------------------------------------------------------------------


async def test_refresh_rotates_to_the_keyed_successor(rig: Rig) -> None:
    issued = await rig.login(remember_me=True)
    rig.clock.advance(100)
    new = await rig.service.refresh(issued.refresh_token, ip="192.0.2.9")
    assert new.refresh_token == rig.service.keys.successor(issued.refresh_token) != issued.refresh_token
    assert new.session.id == issued.session.id and new.user.id == issued.user.id
    assert new.session.expires_at == rig.clock.now + 30 * 86400  # slides
    assert new.refresh_max_age == 30 * 86400
    principal = rig.service.keys.verify_access_token(new.access_token, now=rig.clock.now)
    assert principal.sid == issued.session.id
    assert rig.events[-1] == ("refresh", "rotated")
    assert (await rig.service.refresh(new.refresh_token, ip="")).refresh_token != new.refresh_token


async def test_refresh_within_grace_answers_the_same_successor(rig: Rig) -> None:
    issued = await rig.login()
    first = await rig.service.refresh(issued.refresh_token, ip="")
    rig.clock.advance(9)
    twin = await rig.service.refresh(issued.refresh_token, ip="")
    assert twin.refresh_token == first.refresh_token
    assert rig.events[-1] == ("refresh", "grace_twin")
    assert rig.revoked == []


async def test_refresh_reuse_after_grace_revokes_the_session(rig: Rig) -> None:
    issued = await rig.login()
    other = await rig.login()
    new = await rig.service.refresh(issued.refresh_token, ip="")
    rig.clock.advance(11)
    with pytest.raises(RefreshReused):
        await rig.service.refresh(issued.refresh_token, ip="203.0.113.1")
    assert rig.revoked == [[issued.session.id]]
    assert ("reuse_detected", "refresh_token_reused") in rig.events
    assert ("session_revoked", "refresh_token_reused") in rig.events
    with pytest.raises(RefreshRejected) as info:
        await rig.service.refresh(new.refresh_token, ip="")
    assert not isinstance(info.value, RefreshReused)
    await rig.service.refresh(other.refresh_token, ip="")  # the user's other session lives on


async def test_refresh_unknown_token_is_rejected_and_audited(rig: Rig) -> None:
    with pytest.raises(RefreshRejected) as info:
        await rig.service.refresh("not-a-token", ip="")
    assert not isinstance(info.value, RefreshReused)
    assert [e for e, _ in rig.events] == ["refresh_failure"]
    assert rig.revoked == []


async def test_refresh_limited_per_session(rig: Rig) -> None:
    issued = await rig.login()
    other = await rig.login()
    token = issued.refresh_token
    for _ in range(5):
        token = (await rig.service.refresh(token, ip="")).refresh_token
    rig.clock.advance(5)
    with pytest.raises(RateLimited) as info:
        await rig.service.refresh(token, ip="")
    # GCRA: 5/minute frees one refresh every 12 s after the burst.
    assert info.value.retry_after == 7
    assert rig.events[-1] == ("refresh_failure", "rate_limited")
    await rig.service.refresh(other.refresh_token, ip="")
    rig.clock.advance(7)
    await rig.service.refresh(token, ip="")


async def test_refresh_of_a_revoked_session_is_rejected(rig: Rig) -> None:
    issued = await rig.login()
    await rig.service.revoke_session(issued.session.id, reason="logout")
    with pytest.raises(RefreshRejected):
        await rig.service.refresh(issued.refresh_token, ip="")


# -- revocation ---------------------------------------------------------------------------------


async def test_revoke_session_as_its_owner_and_as_a_stranger(rig: Rig, known_hash: str) -> None:
    mine = await rig.login()
    bob = await _user(rig, "bob@example.com", known_hash)
    with pytest.raises(NoRoute):
        await rig.service.revoke_session(mine.session.id, reason="logout", user_id=bob.id)
    with pytest.raises(NoRoute):
        await rig.service.revoke_session("no-such-session", reason="logout", user_id=mine.user.id)
    assert rig.revoked == []
    revoked = await rig.service.revoke_session(mine.session.id, reason="logout", user_id=mine.user.id, ip="x")
    assert revoked == [mine.session.id]
    assert rig.revoked == [[mine.session.id]]
    assert rig.events[-1] == ("session_revoked", "logout")
    assert await rig.service.revoke_session(mine.session.id, reason="logout") == []  # idempotent
    assert rig.revoked == [[mine.session.id]]  # nothing new to cut


async def test_revoke_user_revokes_only_that_users_sessions(rig: Rig, known_hash: str) -> None:
    a, b = await rig.login(), await rig.login()
    await _user(rig, "bob@example.com", known_hash)
    bob = await rig.login("bob@example.com")
    revoked = await rig.service.revoke_user(a.user.id, reason="logout_all")
    assert sorted(revoked) == sorted([a.session.id, b.session.id])
    assert [e for e in rig.events if e[0] == "session_revoked"] == [("session_revoked", "logout_all")] * 2
    assert [s.id for s in await rig.service.list_sessions(bob.user.id)] == [bob.session.id]
    assert await rig.service.list_sessions(a.user.id) == []


async def test_list_sessions_only_live_ones(rig: Rig) -> None:
    first = await rig.login()
    rig.clock.advance(13 * 3600)  # past session_ttl (12h) without a refresh
    second = await rig.login()
    assert [s.id for s in await rig.service.list_sessions(first.user.id)] == [second.session.id]


# -- what the audit log and the store are told ---------------------------------------------------------


def _audits(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [dict(r.fields) for r in caplog.records if r.name == "gateway.audit" and r.fields["event"] == event]  # type: ignore[attr-defined]


async def test_audit_and_answer_of_a_reuse(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    issued = await rig.login()
    uid, sid = issued.user.id, issued.session.id
    await rig.service.refresh(issued.refresh_token, ip="")
    rig.clock.advance(11)
    with pytest.raises(RefreshReused, match="^this refresh token was already used; the session has been revoked$"):
        await rig.service.refresh(issued.refresh_token, ip="203.0.113.1")
    assert _audits(caplog, "reuse_detected") == [
        {"event": "reuse_detected", "user_id": uid, "session_id": sid, "ip": "203.0.113.1",
         "reason": "refresh_token_reused"}
    ]
    assert _audits(caplog, "session_revoked") == [
        {"event": "session_revoked", "user_id": uid, "session_id": sid, "ip": "", "reason": "refresh_token_reused"}
    ]


async def test_audit_and_answer_of_a_limited_refresh(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    issued = await rig.login()
    token = issued.refresh_token
    for _ in range(5):
        token = (await rig.service.refresh(token, ip="")).refresh_token
    with pytest.raises(RateLimited, match="^too many refreshes for this session; try again later$"):
        await rig.service.refresh(token, ip="198.51.100.7")
    assert _audits(caplog, "refresh_failure") == [{
        "event": "refresh_failure", "user_id": issued.user.id, "session_id": issued.session.id, "ip": "198.51.100.7",
        "reason": "rate_limited",
    }]  # fmt: skip


async def test_audit_and_store_reason_of_revocations(
    rig: Rig, known_hash: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    one, two, three = await rig.login(), await rig.login(), await rig.login()
    uid = one.user.id
    stranger = await _user(rig, "bob@example.com", known_hash)
    with pytest.raises(NoRoute, match="^no such session$"):
        await rig.service.revoke_session(one.session.id, reason="logout", user_id=stranger.id)
    await rig.service.revoke_session(one.session.id, reason="logout", user_id=uid, ip="192.0.2.7")
    await rig.service.revoke_session(two.session.id, reason="admin")
    await rig.service.revoke_user(uid, reason="logout_all")
    assert _audits(caplog, "session_revoked") == [
        {"event": "session_revoked", "user_id": uid, "session_id": one.session.id, "ip": "192.0.2.7",
         "reason": "logout"},
        {"event": "session_revoked", "user_id": None, "session_id": two.session.id, "ip": "", "reason": "admin"},
        {"event": "session_revoked", "user_id": uid, "session_id": three.session.id, "ip": "", "reason": "logout_all"},
    ]
    store = rig.service.store
    for issued, reason in ((one, "logout"), (two, "admin"), (three, "logout_all")):
        found = await store.find_session(session_id=issued.session.id)
        assert found is not None and found.revoked_reason == reason


async def test_audit_of_user_changes(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    bob = await rig.service.add_user("bob@example.com", "bobs password")
    carol = await rig.service.add_user("carol@example.com", "carols password")
    assert bob.id != carol.id and str(uuid.UUID(bob.id)) == bob.id
    issued = await rig.login("bob@example.com", "bobs password")
    await rig.service.set_disabled("bob@example.com", disabled=True)
    await rig.service.set_disabled("bob@example.com", disabled=False)
    assert [f["user_id"] for f in _audits(caplog, "user_created")] == [bob.id, carol.id]
    assert _audits(caplog, "user_disabled") == [{"event": "user_disabled", "user_id": bob.id}]
    assert _audits(caplog, "user_enabled") == [{"event": "user_enabled", "user_id": bob.id}]
    assert _audits(caplog, "session_revoked") == [
        {"event": "session_revoked", "user_id": bob.id, "session_id": issued.session.id, "ip": "",
         "reason": "user_disabled"}
    ]


async def test_audit_of_a_logout_all_names_the_callers_address(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    one, two = await rig.login(), await rig.login()
    revoked = await rig.service.revoke_user(one.user.id, reason="logout_all", ip="198.51.100.20")
    assert sorted(revoked) == sorted([one.session.id, two.session.id])
    assert sorted(_audits(caplog, "session_revoked"), key=lambda f: f["session_id"]) == sorted(
        [{"event": "session_revoked", "user_id": one.user.id, "session_id": s, "ip": "198.51.100.20",
          "reason": "logout_all"} for s in (one.session.id, two.session.id)],
        key=lambda f: f["session_id"],
    )  # fmt: skip
    assert rig.revoked == [revoked]


# -- what the client is told (error_description) ---------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda: normalize_email(7), "email must be a string"),
     (lambda: normalize_email("alice"), r"email is not a valid address \(.*@-sign.*\)"),
     (lambda: normalize_email("al ice@example.com"), "email must not contain spaces or control characters"),
     (lambda: check_password(12345678), "password must be a string"),
     (lambda: check_password("short"), "password must be 8 to 1024 characters")],
)  # fmt: skip
def test_email_and_password_refusals_say_why(call: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=f"^{message}$"):
        call()


def test_normalize_email_domain_is_what_follows_the_last_at() -> None:
    # "example.com@localhost" is not the domain: the part after the last "@" is, and it has no dot
    with pytest.raises(BadRequest):
        normalize_email("alice@example.com@localhost")
    # a one-letter first label is a domain like any other (the dot check strips only dots)
    assert normalize_email("elon@X.com") == ("elon@x.com", "elon@x.com")


@pytest.mark.parametrize(
    "bad",
    [
        "attacker@evil.com,ceo@corp.com",  # two addresses: policy read corp.com, the mail went to evil.com
        "mallory@evil.com.",  # a trailing dot got past deny = [{ email_domains = ["evil.com"] }]
        "a;b@corp.com", "<ceo@corp.com>", "CEO<ceo@corp.com>", '"ceo"@corp.com', "ceo(x)@corp.com",
        "ceo@[192.0.2.1]", "ceo@192.0.2.1", "ceo@corp..com", "ceo@-corp.com", "ceo@exa_mple.com",
    ],
)  # fmt: skip
def test_normalize_email_refuses_anything_but_one_address(bad: str) -> None:
    # Each passed before this stop (the domain was whatever followed the last "@").
    with pytest.raises(BadRequest):
        normalize_email(bad)


def test_normalize_email_international_addresses_have_one_key() -> None:
    # RFC 6531 local parts and IDNA domains are addresses; the A-label and U-label spellings of a
    # domain are one address, so they cannot be two accounts.
    assert normalize_email("jörg@münchen.example")[1] == normalize_email("JÖRG@xn--mnchen-3ya.example")[1]
    assert normalize_email("ceo@corp.test")[0] == "ceo@corp.test"


async def test_login_refusals_say_why(rig: Rig) -> None:
    with pytest.raises(BadRequest, match="^password must be a string of 1 to 1024 characters$"):
        await rig.login(password="")
    # 1024 characters is a well-formed (here: wrong) password, not a malformed request
    with pytest.raises(InvalidCredentials, match="^the email or password is wrong$"):
        await rig.login(password="x" * 1024)
    with pytest.raises(InvalidCredentials, match="^the email or password is wrong$"):
        await rig.login("nobody@example.com")
    with pytest.raises(InvalidCredentials):
        await rig.login(password="wrong password!")
    with pytest.raises(RateLimited, match="^too many failed login attempts; try again later$"):
        await rig.login()


async def test_get_user_unknown_names_the_trimmed_email(rig: Rig) -> None:
    with pytest.raises(NoRoute, match="^no user with email nobody@example.com$"):
        await rig.service.get_user("  nobody@example.com ")


async def test_refresh_refusal_names_the_stores_reason(rig: Rig) -> None:
    with pytest.raises(RefreshRejected, match=r"^the refresh token is invalid \(unknown\)$"):
        await rig.service.refresh("not-a-token", ip="")
    issued = await rig.login()
    await rig.service.revoke_session(issued.session.id, reason="logout")
    with pytest.raises(RefreshRejected, match=r"^the refresh token is invalid \(revoked\)$"):
        await rig.service.refresh(issued.refresh_token, ip="")


# -- what the audit log is told about logins and refreshes -------------------------------------------


async def test_audit_of_login_failures_and_success(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    uid = (await rig.service.get_user(EMAIL)).id
    with pytest.raises(InvalidCredentials):
        await rig.login(password="wrong password!", ip="198.51.100.1")
    with pytest.raises(InvalidCredentials):
        await rig.login("nobody@example.com", ip="198.51.100.2")
    issued = await rig.login(ip="198.51.100.3")
    assert _audits(caplog, "login_failure") == [
        {"event": "login_failure", "user_id": uid, "ip": "198.51.100.1", "reason": "wrong_password"},
        {"event": "login_failure", "user_id": None, "ip": "198.51.100.2", "reason": "unknown_email"},
    ]
    assert _audits(caplog, "login_success") == [
        {"event": "login_success", "user_id": uid, "session_id": issued.session.id, "ip": "198.51.100.3"}
    ]


async def test_audit_of_a_limited_login(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await rig.login(password="wrong password!", ip="203.0.113.8")
    caplog.set_level(logging.INFO, logger="gateway.audit")
    with pytest.raises(RateLimited):
        await rig.login(ip="203.0.113.8")
    assert _audits(caplog, "login_failure") == [
        {"event": "login_failure", "ip": "203.0.113.8", "reason": "rate_limited"}
    ]


async def test_audit_of_refreshes(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    issued = await rig.login()
    uid, sid = issued.user.id, issued.session.id
    await rig.service.refresh(issued.refresh_token, ip="192.0.2.9")
    await rig.service.revoke_session(sid, reason="logout")
    with pytest.raises(RefreshRejected):
        await rig.service.refresh(issued.refresh_token, ip="192.0.2.10")
    with pytest.raises(RefreshRejected):
        await rig.service.refresh("not-a-token", ip="192.0.2.11")
    assert _audits(caplog, "refresh") == [
        {"event": "refresh", "user_id": uid, "session_id": sid, "ip": "192.0.2.9", "reason": "rotated"}
    ]
    assert _audits(caplog, "refresh_failure") == [
        {"event": "refresh_failure", "user_id": uid, "session_id": sid, "ip": "192.0.2.10", "reason": "revoked"},
        {"event": "refresh_failure", "user_id": None, "session_id": None, "ip": "192.0.2.11", "reason": "unknown"},
    ]
    assert rig.events[-1] == ("refresh_failure", "unknown")


async def test_audit_of_a_password_change_names_the_user(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    issued = await rig.login()
    await rig.service.set_password(EMAIL, "a brand new password")
    assert _audits(caplog, "session_revoked") == [
        {"event": "session_revoked", "user_id": issued.user.id, "session_id": issued.session.id, "ip": "",
         "reason": "password_changed"}
    ]  # fmt: skip


# -- what the session and its access tokens carry ------------------------------------------------


async def test_login_session_says_password_and_no_provider(rig: Rig) -> None:
    issued = await rig.login()
    assert (issued.session.amr, issued.session.idp) == (("pwd",), "")
    principal = rig.service.keys.verify_access_token(issued.access_token, now=rig.clock.now)
    assert (principal.amr, principal.idp, principal.roles, principal.rv) == (("pwd",), "", (), 0)


async def test_start_session_carries_methods_provider_and_roles_into_tokens(rig: Rig) -> None:
    user = await rig.service.get_user(EMAIL)
    user = await rig.service.store.set_user_roles(user.id, ("ops", "admin"), now=rig.clock.now)
    assert user is not None and user.roles_version == 1
    issued = await rig.service.start_session(
        user, remember_me=False, user_agent="ua", ip="192.0.2.1", amr=("pwd", "otp", "mfa"), idp="corp"
    )
    stored = await rig.service.store.find_session(session_id=issued.session.id)
    assert stored is not None and (stored.amr, stored.idp) == (("pwd", "otp", "mfa"), "corp")
    for token in (issued.access_token, (await rig.service.refresh(issued.refresh_token, ip="")).access_token):
        principal = rig.service.keys.verify_access_token(token, now=rig.clock.now)
        assert (principal.amr, principal.idp) == (("pwd", "otp", "mfa"), "corp")
        assert (principal.roles, principal.rv) == (("admin", "ops"), 1)


async def test_refresh_max_age_is_zero_in_the_last_second(tmp_path: Path, known_hash: str) -> None:
    tokens = {"secret": "s" * 40, "access_ttl": "1m", "refresh_ttl": "30d", "absolute_ttl": "10m", "leeway": "0s"}
    async for r in _rig(tmp_path, tokens=tokens):
        await _user(r, EMAIL, known_hash)
        issued = await r.login(remember_me=True)
        r.clock.advance(599.5)
        # the refresh cookie must not outlive the session: under a second left is Max-Age=0, not 1
        assert (await r.service.refresh(issued.refresh_token, ip="")).refresh_max_age == 0


async def test_login_with_require_verified_email(
    tmp_path: Path, known_hash: str, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.store import EmailToken, NewMail

    tokens = {"secret": "s" * 40, "leeway": "0s"}
    async for r in _rig(tmp_path, tokens=tokens, accounts={"require_verified_email": True}):
        store = r.service.store
        await store.signup_user(
            user_id="u-new", email=EMAIL, email_key=EMAIL, password_hash=known_hash, now=r.clock.now,
            token=EmailToken("h" * 64, "verify", r.clock.now + 100),
            mail=NewMail("no-reply@example.com", EMAIL, "Subject: verify\r\n\r\nlink"),
        )  # fmt: skip
        caplog.set_level(logging.INFO, logger="gateway.audit")
        with pytest.raises(InvalidCredentials):  # a wrong password is told nothing about verification
            await r.login(password="wrong password!")
        with pytest.raises(
            EmailNotVerified, match="^the email address is not verified yet; follow the link in the mail$"
        ):
            await r.login(ip="192.0.2.44")
        assert _audits(caplog, "login_failure")[-1] == {
            "event": "login_failure", "user_id": "u-new", "ip": "192.0.2.44", "reason": "email_not_verified"
        }  # fmt: skip
        assert r.events[-1] == ("login_failure", "email_not_verified")
        await store.set_email_verified("u-new", now=r.clock.now)
        assert (await r.login()).user.id == "u-new"
