"""The mail outbox against a real SMTP server process: an outage, a restart mid-delivery, several senders.

Requests only queue mails; the sender task of each gateway delivers them. Each test counts the mails
the SMTP server actually received.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.http.keys import SESSIONS
from tests.conftest import MakeConfig, MakeGateway
from tests.mailbox import Mailbox, link_token
from tests.support import FakeClock, free_port

PASSWORD = "correct horse battery staple"


@pytest.fixture
def box(tmp_path: Path) -> Any:
    """A test SMTP server that a test starts and stops itself."""
    maildir = tmp_path / "mail"
    maildir.mkdir()
    server = Mailbox(maildir, free_port())
    yield server
    server.stop()


def _outbox(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT recipient, attempts, sent_at IS NOT NULL, lease_until FROM mail_outbox ORDER BY id").fetchall()


def _cfg(make_config: MakeConfig, box: Mailbox, **extra: Any) -> Any:
    return make_config(
        accounts={"link_base": "https://app.example.com"},
        email={"smtp_url": box.url},
        server={"trusted_proxies": ["127.0.0.1/32"]},
        **extra,
    )


async def _forgot(client: Any, address: str, ip: str = "198.51.100.1") -> None:
    started = time.perf_counter()
    resp = await client.post("/auth/password/forgot", json={"email": address}, headers={"X-Forwarded-For": ip})
    assert resp.status == 202
    assert time.perf_counter() - started < 2  # never waits for SMTP


async def _until(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_outbox_smtp_outage_mails_queued_then_arrive_once(
    make_gateway: MakeGateway, make_config: MakeConfig, box: Mailbox, clock: FakeClock, tmp_path: Path
) -> None:
    client = await make_gateway(_cfg(make_config, box))
    users = [f"u{i}@example.com" for i in range(3)]
    for address in users:
        await client.server.app[SESSIONS].add_user(address, PASSWORD)
        await _forgot(client, address)
    db = tmp_path / "gateway.db"
    # the server is down: every mail is tried, fails, and waits for its retry
    await _until(lambda: len(_outbox(db)) == 3 and all(r[1] >= 1 and r[3] is None for r in _outbox(db)))
    assert not any(r[2] for r in _outbox(db))
    box.start()
    clock.advance(2)  # past the first back-off
    await box.wait_for(3)
    await _until(lambda: all(r[2] for r in _outbox(db)))
    clock.advance(600)
    await asyncio.sleep(2.5)  # more sender rounds: nothing is sent twice
    assert sorted(m["X-Envelope-To"] for m in box.messages()) == users
    # the token is usable: the mail that arrived late is the real one
    token = link_token(box.to(users[0])[0], "reset-password")
    resp = await client.post("/auth/password/reset", json={"token": token, "password": "a brand new passphrase"})
    assert resp.status == 204


async def test_outbox_gateway_restart_mid_delivery_mail_arrives_once(
    aiohttp_server: Any, make_config: MakeConfig, box: Mailbox, tmp_path: Path
) -> None:
    clock = FakeClock()
    cfg = _cfg(make_config, box)
    box.start()
    box.stall(True)  # the server holds RCPT: the delivery hangs after the claim
    first = await aiohttp_server(create_app(cfg, clock=clock))
    await first.app[SESSIONS].add_user("r@example.com", PASSWORD)
    async with first_client(first) as http:
        await _forgot(http, "r@example.com")
    db = tmp_path / "gateway.db"
    await _until(lambda: bool(_outbox(db)) and _outbox(db)[0][3] is not None)  # leased, in flight
    await first.close()  # the gateway stops in the middle of the delivery
    box.stall(False)
    assert box.messages() == []
    assert _outbox(db)[0][2] == 0  # not marked sent
    clock.advance(61)  # the dead sender's lease runs out
    second = await aiohttp_server(create_app(cfg, clock=clock))
    try:
        await box.wait_for(1)
        await _until(lambda: _outbox(db)[0][2] == 1)
        await asyncio.sleep(2.0)
        assert len(box.messages()) == 1
    finally:
        await second.close()


async def test_outbox_two_instances_send_each_mail_once(
    make_gateway: MakeGateway, make_config: MakeConfig, box: Mailbox, store_url_any: str
) -> None:
    box.start()
    cfg = _cfg(make_config, box, store={"url": store_url_any}, limits={"email": "100/hour"})
    a = await make_gateway(cfg)
    b = await make_gateway(cfg)
    users = [f"m{i}@example.com" for i in range(12)]
    for address in users:
        await a.server.app[SESSIONS].add_user(address, PASSWORD)
    await asyncio.gather(*(_forgot((a, b)[i % 2], address) for i, address in enumerate(users)))
    await box.wait_for(12)
    await asyncio.sleep(2.0)
    assert sorted(m["X-Envelope-To"] for m in box.messages()) == sorted(users)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url_any(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_accounts_signup_verify_flow_on_postgres(
    make_gateway: MakeGateway, make_config: MakeConfig, box: Mailbox, pg_url: str
) -> None:
    box.start()
    cfg = make_config(
        store={"url": pg_url},
        accounts={"signup": True, "require_verified_email": True, "link_base": "https://app.example.com"},
        email={"smtp_url": box.url},
    )
    client = await make_gateway(cfg)
    resp = await client.post("/auth/signup", json={"email": "pg@example.com", "password": PASSWORD})
    assert resp.status == 202
    token = link_token((await box.wait_for(1))[0], "verify-email")
    login = {"email": "pg@example.com", "password": PASSWORD, "refresh_in_body": True}
    assert (await client.post("/auth/login", json=login)).status == 403
    assert (await client.post("/auth/verify-email", json={"token": token})).status == 204
    assert (await client.post("/auth/verify-email", json={"token": token})).status == 400
    assert (await client.post("/auth/login", json=login)).status == 200


class first_client:  # used as a context manager, like a function
    """A plain aiohttp client for a TestServer, closed on exit."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def __aenter__(self) -> Any:
        from aiohttp.test_utils import TestClient

        self.client = TestClient(self.server)
        await self.client.start_server()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.session.close()


async def test_outbox_sender_stops_when_a_mail_is_queued_as_it_is_cancelled(tmp_path: Path) -> None:
    """Shutdown cancels the sender right after the last request queued a mail (and woke it): the
    cancellation must end the loop, not be lost to the wake-up (it was, with asyncio.wait_for on 3.11,
    and the gateway then never finished shutting down)."""
    from gateway.accounts.mailer import SmtpMailer
    from gateway.accounts.outbox import MailSender
    from gateway.store import open_store
    from tests.support import build_config

    store = await open_store(build_config(tmp_path, "http://127.0.0.1:1").store)
    try:
        for _ in range(20):  # the race is between two callbacks of one loop turn; try it many times
            sender = MailSender(store=store, mailer=SmtpMailer(f"smtp://127.0.0.1:{free_port()}"), clock=time.time)
            task = asyncio.create_task(sender.run())
            await asyncio.sleep(0.01)  # the sender now waits for a wake-up
            sender.wake()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
    finally:
        await store.aclose()
