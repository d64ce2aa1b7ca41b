"""Request-target normalization and the longest-prefix route table; both pure.

Prefixes compare with case, but a path that would pick another route, or one of the gateway's own
paths, if case were ignored is refused (AmbiguousPath): upstreams that route without case (Express,
Koa, ASP.NET, IIS) would otherwise serve /admin/x to whoever asks the public "/" route for /ADMIN/x.

Must not: import aiohttp, or let routing and forwarding see two different forms of one path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit

from gateway.config import Config, RouteConfig
from gateway.core.casefold import fold_case
from gateway.core.errors import AmbiguousPath, BadRequest

__all__ = ["OWN_PATHS", "RouteTable", "Target", "normalize_target", "under_prefix"]

# The gateway's own paths outside server.auth_prefix (gateway/app.py checks that it serves no others).
OWN_PATHS = ("/.well-known/jwks.json", "/healthz", "/readyz", "/metrics")

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


_OWN = object()  # the winner "one of the gateway's own paths"


class RouteTable:
    """Routes ordered longest prefix first; `match` returns the route for a normalized path.

    `own_prefix` (server.auth_prefix) and `own_paths` are the gateway's: they win over every route,
    with case and, for the ambiguity check, without it.
    """

    def __init__(self, routes: tuple[RouteConfig, ...], *, own_prefix: str = "", own_paths: Iterable[str] = ()) -> None:
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        self._own_prefix = own_prefix
        self._own_paths = frozenset(own_paths)
        # Folded once here: the prefixes, longest first, each with every route that folds to it
        # (config refuses two, but a table built from anything must not pick one of them silently).
        groups: dict[str, list[RouteConfig]] = {}
        for route in self._routes:
            groups.setdefault(fold_case(route.prefix), []).append(route)
        self._folded = sorted(((p, tuple(rs)) for p, rs in groups.items()), key=lambda pr: len(pr[0]), reverse=True)
        self._own_folded_prefix = fold_case(own_prefix)
        self._own_folded_paths = frozenset(fold_case(p) for p in self._own_paths)
        # Every key its own fold: a path that is its own fold then picks the same winner either way.
        self._fold_invariant = (
            all(p == rs[0].prefix for p, rs in self._folded)
            and self._own_folded_prefix == own_prefix
            and self._own_folded_paths == self._own_paths
        )

    @classmethod
    def from_config(cls, cfg: Config) -> RouteTable:
        """The table the gateway routes by: the config's routes and the gateway's own paths."""
        return cls(cfg.routes, own_prefix=cfg.server.auth_prefix, own_paths=OWN_PATHS)

    def match(self, path: str) -> RouteConfig | None:
        """The route with the longest prefix that covers `path`; None when no route does or the path
        is the gateway's own. Raises AmbiguousPath when, with case ignored, another route or a gateway
        path would be picked (a path no route matches with case is None whatever its case)."""
        own = self._own_prefix
        if path in self._own_paths or own and under_prefix(path, own):
            return None
        for route in self._routes:
            if under_prefix(path, route.prefix):
                break
        else:
            return None
        folded = fold_case(path)
        if folded == path and self._fold_invariant:
            return route
        own = self._own_folded_prefix
        if folded in self._own_folded_paths or own and under_prefix(folded, own):
            raise AmbiguousPath("the path names one of the gateway's own paths if case is ignored")
        for prefix, routes in self._folded:
            if under_prefix(folded, prefix):
                if routes != (route,):
                    raise AmbiguousPath("the path names another route if case is ignored")
                break
        return route

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
