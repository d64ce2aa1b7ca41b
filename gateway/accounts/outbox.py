"""The sender task: takes due mails from the store's outbox, delivers them, retries with back-off.

Every worker and instance may run one; the store leases each mail to one of them at a time
(`Store.claim_mail`), and a mail whose sender died mid-delivery is taken again once its lease runs
out, so none is lost across a restart. A mail is marked sent only after the SMTP server accepted it
(at-least-once: a crash between the two sends it again).

Must not: import aiohttp; be awaited by a request (requests only queue mails and call `wake`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from gateway.accounts.mailer import DeliveryError
from gateway.core.errors import StoreError
from gateway.core.log import store_log
from gateway.store import OutboxMail, Store

__all__ = ["MailSender", "retry_delay"]

# Longer than the SMTP client's whole timeout, so a lease never runs out under a live delivery.
LEASE_S = 60.0
POLL_S = 1.0
BATCH = 10
_FIRST_RETRY_S = 1.0
_MAX_RETRY_S = 300.0


class Mailer(Protocol):
    async def send(self, mail: OutboxMail) -> None: ...


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 1, 2, 4 ... at most 5 minutes."""
    return float(min(_MAX_RETRY_S, _FIRST_RETRY_S * 2 ** max(0, attempts - 1)))


class MailSender:
    """Drains the outbox in a loop; `wake()` makes it look at once instead of at the next poll."""

    def __init__(self, *, store: Store, mailer: Mailer, clock: Callable[[], float], poll_s: float = POLL_S) -> None:
        self.store = store
        self.mailer = mailer
        self.clock = clock
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A mail was queued: look now."""
        self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled."""
        while True:
            self._wake.clear()
            try:
                handled = await self.drain_once()
            except StoreError as exc:
                store_log.warning("mail outbox: store unavailable: %s", exc)
                handled = 0
            if handled < BATCH:
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for loses a cancellation that
                # arrives as the event is set (a mail queued at shutdown), and this loop then never ended.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()

    async def drain_once(self) -> int:
        """Claims one batch of due mails and tries each once; returns how many it took."""
        mails = await self.store.claim_mail(now=self.clock(), lease_s=LEASE_S, limit=BATCH)
        for mail in mails:
            try:
                await self.mailer.send(mail)
            except DeliveryError as exc:
                retry_at = None if exc.permanent else self.clock() + retry_delay(mail.attempts)
                store_log.warning(
                    "mail not delivered id=%s attempt=%s permanent=%s reason=%s", mail.id, mail.attempts, exc.permanent, exc
                )
                await self.store.mail_failed(mail.id, now=self.clock(), retry_at=retry_at, error=str(exc))
            else:
                store_log.info("mail delivered id=%s attempt=%s", mail.id, mail.attempts)
                await self.store.mail_sent(mail.id, now=self.clock())
        return len(mails)
