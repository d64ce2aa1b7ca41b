"""Keeps the app's `StaleGrants` in step with the store's grant-change log (roles, removed clients).

Must not: block a request on the store; requests only read the in-memory table this fills.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.core.errors import StoreError
from gateway.core.log import store_log
from gateway.core.tasks import change_window_s, running, spawn
from gateway.http.keys import CLOCK, CONFIG, GRANTS, STORE
from gateway.proxy.forward import close_stale_websockets

__all__ = ["grants_ctx"]


async def grants_ctx(app: web.Application) -> AsyncIterator[None]:
    """A cleanup_ctx step (after the store's): loads recent changes, then polls for new ones."""
    cfg = app[CONFIG]
    store = app[STORE]
    grants = app[GRANTS]
    # Older changes cannot matter: every token issued before them has expired.
    window = change_window_s(cfg.tokens)

    async def catch_up(since: float = 0.0) -> None:
        changes = await store.access_changes_since(grants.last_seq, not_before=since)
        now = app[CLOCK]()
        for change in changes:
            grants.raise_to(change.subject, change.version, at=now)
        if changes:
            grants.last_seq = changes[-1].seq
            spawn(close_stale_websockets(app, grants.refuses))  # the poll keeps its pace

    await catch_up(app[CLOCK]() - window)
    interval = cfg.server.revocation_poll.total_seconds()

    async def poll() -> None:
        last_prune = app[CLOCK]()
        while True:
            await asyncio.sleep(interval)
            try:
                await catch_up()
            except StoreError as exc:
                store_log.warning("grant-change poll failed: %s", exc)
            now = app[CLOCK]()
            if now - last_prune > 3600:
                last_prune = now
                grants.prune(before=now - window)

    async with running(poll()):
        yield
