"""In-process sliding-window rate limiter used for login failures and refreshes.

Must not: import aiohttp or read the clock itself; it counts only what this process sees.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque

from gateway.config import Rate

__all__ = ["RateLimiter"]

_MAX_KEYS = 100_000


class RateLimiter:
    """At most `rate.count` events per key in any window of `rate.period_s` seconds.

    Not locked: each instance must be used by one thread at a time. The refresh limiter is used only
    inside the store's rotation (SQLite's own thread, or the event loop with PostgreSQL; see
    SessionService.refresh), the login limiters only on the event loop.
    """

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._events: dict[str, deque[float]] = {}

    def _window(self, key: str, now: float) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= _MAX_KEYS:
                self._sweep(now)
            events = self._events[key] = deque()
        cutoff = now - self.rate.period_s
        while events and events[0] <= cutoff:
            events.popleft()
        return events

    def retry_after(self, key: str, *, now: float) -> int:
        """0 when another event is allowed now, else whole seconds until one is."""
        events = self._window(key, now)
        if len(events) < self.rate.count:
            return 0
        return max(1, math.ceil(events[0] + self.rate.period_s - now))

    def hit(self, key: str, *, now: float) -> None:
        """Records one event."""
        self._window(key, now).append(now)

    def release(self, key: str, *, at: float) -> None:
        """Takes back one event recorded at `at` (a reserved attempt that turned out not to count)."""
        events = self._events.get(key)
        if events:
            with contextlib.suppress(ValueError):  # already slid out of the window
                events.remove(at)

    def take(self, key: str, *, now: float) -> int:
        """Records an event if allowed (returns 0), else returns the seconds to wait."""
        wait = self.retry_after(key, now=now)
        if not wait:
            self._events[key].append(now)
        return wait

    def _sweep(self, now: float) -> None:
        cutoff = now - self.rate.period_s
        self._events = {k: v for k, v in self._events.items() if v and v[-1] > cutoff}
