"""The in-memory set of revoked session ids that every proxied request is checked against in O(1).

Must not: import aiohttp or query the store per request; it is fed by local revocations at once
and by the store's revocation log on a short poll (see `app.py`).
"""

from __future__ import annotations

__all__ = ["RevokedSessions"]


class RevokedSessions:
    """Session ids revoked recently enough that one of their access tokens could still be live."""

    def __init__(self) -> None:
        self._ids: dict[str, float] = {}
        self.last_seq = 0

    def __contains__(self, sid: str) -> bool:
        return sid in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: list[str], *, at: float) -> list[str]:
        """Adds ids; returns those that were not yet known (so callers act on each once)."""
        new = [sid for sid in ids if sid not in self._ids]
        for sid in new:
            self._ids[sid] = at
        return new

    def prune(self, *, before: float) -> None:
        """Forgets revocations older than `before`: every token of those sessions has expired by then."""
        if any(at < before for at in self._ids.values()):
            self._ids = {sid: at for sid, at in self._ids.items() if at >= before}
