"""The one case fold under which route prefixes, the gateway's own paths and policy deny globs are compared.

Upstreams that route without case do not agree on how: Express and Koa lower-case ASCII, .NET
upper-cases (`ToUpperInvariant`: dotless ı and long ſ become I and S), Java lower-cases char by
char (İ becomes i), full Unicode case folding turns the Kelvin sign into k, ß into ss and the
ﬆ ligature into st. `fold_case` maps a string so that any two spellings one of these would take
for the same are equal; it is context-free and never creates or removes a `/`, so a folded path
keeps its segments.

Must not: import anything of the gateway.
"""

from __future__ import annotations

__all__ = ["fold_case"]

# U+0130 (İ): upper() keeps it and casefold() makes it "i" plus a combining dot; Java reads it as "i".
_DOTTED_CAPITAL_I = {0x130: "i"}


def fold_case(text: str) -> str:
    """`text` with case removed: ASCII lower-cased; other text upper-cased, then Unicode case-folded."""
    if text.isascii():
        return text.lower()
    # upper() first: it maps ı and ſ to ASCII letters, which casefold() alone leaves alone.
    return text.translate(_DOTTED_CAPITAL_I).upper().casefold()
