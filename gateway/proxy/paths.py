"""Request-target normalization and the longest-prefix route table; both pure.

Must not: import aiohttp, or let routing and forwarding see two different forms of one path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit

from gateway.config import RouteConfig
from gateway.core.errors import BadRequest

__all__ = ["RouteTable", "Target", "normalize_target", "under_prefix"]

_BROKEN_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Everything outside this set is percent-encoded again, so the upstream (or its client library)
# cannot decode a second layer that we did not route on; ';' is encoded because servlet-style
# servers treat it as a path-parameter separator.
_SAFE = "/!$&'()*+,=:@-._~"


@dataclass(frozen=True, slots=True)
class Target:
    """A request target after normalization: `path` decoded for routing, `encoded` for forwarding."""

    path: str
    encoded: str
    query: str


def normalize_target(raw: str) -> Target:
    """Decodes the path once, reads `\\` as `/`, collapses `//`, resolves dot segments (never above `/`).

    Raises BadRequest for a NUL, a broken escape or a target that is not a path.
    """
    path, sep, query = raw.partition("?")
    if not path.startswith("/"):
        if not path.startswith(("http://", "https://")):
            raise BadRequest("the request target must be a path")
        path = urlsplit(path).path or "/"
    if "%" in path:
        if _BROKEN_ESCAPE.search(path):
            raise BadRequest("the path has a broken percent-escape")
        raw_bytes = unquote_to_bytes(path)
        decoded = raw_bytes.decode("utf-8", "surrogateescape")
    else:
        decoded = path
    if "\x00" in decoded:
        raise BadRequest("the path contains a NUL byte")
    decoded = decoded.replace("\\", "/")
    if "//" in decoded or "/." in decoded:
        decoded = _resolve(decoded)
    return Target(path=decoded, encoded=_encode(decoded), query=query if sep else "")


def _encode(path: str) -> str:
    """The one encoding of a decoded path; routing, stripping and forwarding must all agree on it."""
    return quote(path.encode("utf-8", "surrogateescape"), safe=_SAFE)


def _resolve(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    # "/a/b/" and "/a/b/.." keep the trailing slash that names a directory, as RFC 3986 5.2.4 does.
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


def under_prefix(path: str, prefix: str) -> bool:
    """Whether `prefix` matches `path` on whole segments (`/api` matches `/api/x`, not `/apix`)."""
    return prefix == "/" or path == prefix or path.startswith(prefix) and path[len(prefix)] == "/"


class RouteTable:
    """Routes ordered longest prefix first; `match` returns the route for a normalized path."""

    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)

    def match(self, path: str) -> RouteConfig | None:
        """The route with the longest prefix that covers `path`, or None."""
        for route in self._routes:
            if under_prefix(path, route.prefix):
                return route
        return None

    @staticmethod
    def upstream_path(route: RouteConfig, encoded: str) -> str:
        """The encoded path the upstream receives: prefix stripped if configured."""
        if route.strip_prefix and route.prefix != "/":
            # Strip the prefix's encoded form: a prefix like "/café" or "/a;b" is longer once encoded,
            # and cutting its decoded length off the encoded path would leave half an escape behind.
            encoded = encoded[len(_encode(route.prefix)) :] or "/"
            if not encoded.startswith("/"):
                encoded = "/" + encoded
        return encoded
