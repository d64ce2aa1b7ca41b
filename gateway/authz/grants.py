"""The in-memory table of grant changes that every proxied request's token is checked against in O(1).

A role change bumps the user's roles version in the store and appends (user, version) to the store's
ordered grant-change log; every instance polls that log (see `app.py`) and refuses access tokens whose
`rv` claim is below the version it holds. A removed machine client is logged with `REMOVED`, which no
token reaches. Versions, not times: `iat` has whole seconds, so a token issued in the same second as
a change would be ambiguous by time, never by version.

Must not: import aiohttp or query the store per request.
"""

from __future__ import annotations

__all__ = ["REMOVED", "StaleGrants"]

# The version logged for a removed machine client: above every `rv` a token can carry.
REMOVED = 2**62


class StaleGrants:
    """Subject id -> the lowest `rv` its access tokens must carry, for recent changes only."""

    def __init__(self) -> None:
        self._min: dict[str, tuple[int, float]] = {}
        self.last_seq = 0

    def __len__(self) -> int:
        return len(self._min)

    def refuses(self, subject: str, rv: int) -> bool:
        """Whether a token of `subject` carrying `rv` predates a change this instance knows of."""
        entry = self._min.get(subject)
        return entry is not None and rv < entry[0]

    def raise_to(self, subject: str, version: int, *, at: float) -> None:
        """Records that `subject`'s tokens need `version` from now on (never lowers it)."""
        entry = self._min.get(subject)
        if entry is None or entry[0] < version:
            self._min[subject] = (version, at)

    def prune(self, *, before: float) -> None:
        """Forgets changes older than `before`: every token issued before them has expired by then."""
        if any(at < before for _, at in self._min.values()):
            self._min = {s: e for s, e in self._min.items() if e[1] >= before}
