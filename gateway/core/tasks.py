"""The app's background tasks: fire-and-forget work kept alive until it ends, and loops that live as
long as one `cleanup_ctx` step; and the window of recent changes the pollers look back over.

Must not: import aiohttp, or hold anything but tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from gateway.config import TokenConfig

__all__ = ["change_window_s", "running", "spawn"]

# asyncio keeps only a weak reference to a task: one nobody holds may be collected before it ends.
_in_flight: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Runs `coro` in the background, held until it ends (e.g. closing WebSockets: each close waits
    for its peer, and the caller must not)."""
    task = asyncio.get_running_loop().create_task(coro)
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)
    return task


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """Runs `coro` as a task for the body of the `async with`, then cancels it and waits for it."""
    task = asyncio.get_running_loop().create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def change_window_s(tokens: TokenConfig) -> float:
    """How far back a revocation or grant change can still matter: every access token issued before
    it has expired after access_ttl + leeway (a minute more for clocks and polls)."""
    return (tokens.access_ttl + tokens.leeway).total_seconds() + 60
