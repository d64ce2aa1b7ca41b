"""Recovery codes: ten single-use codes, shown once, kept only as keyed digests.

Must not: import aiohttp or keep a code in plaintext anywhere but the one answer that shows it.
"""

from __future__ import annotations

import secrets

__all__ = ["COUNT", "new_codes", "normalize"]

COUNT = 10
# Lowercase base32 without look-alikes (0/o, 1/l): 10 characters = 50 bits each, written xxxxx-xxxxx.
_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def new_codes() -> list[str]:
    """Ten fresh codes as the user sees them."""
    out = []
    for _ in range(COUNT):
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(10))
        out.append(f"{raw[:5]}-{raw[5:]}")
    return out


def normalize(code: object) -> str | None:
    """The code as stored (lowercase, no dashes or spaces), or None when it cannot be one."""
    if not isinstance(code, str) or len(code) > 64:
        return None
    value = code.strip().lower().replace("-", "").replace(" ", "")
    return value if len(value) == 10 and all(c in _ALPHABET for c in value) else None
