"""The request-header policy of SPEC "Proxying": which client headers reach an upstream, and the
identity and forwarding headers the gateway adds.

A header reaches an upstream under its name as the upstream's framework reads it, not as it was
sent: WSGI/CGI servers map `X_User_Id` and `x-user-id` alike to `HTTP_X_USER_ID`, PHP also maps
`X.User.Id` there. So every name is compared after folding (case-fold, `_` and `.` read as `-`),
and the sets it is compared with are built once per config (`HeaderPolicy(cfg)`): per header the
hot path is a lower-casing and a set lookup.

Must not: import aiohttp (it is fed plain name/value pairs), or let any client header through
whose folded name is one the gateway sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from gateway.config import Config

__all__ = ["HOP_BY_HOP", "HeaderPolicy", "Identity", "RequestFacts", "encode_identity", "fold"]

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
     "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)  # fmt: skip
# Forwarding headers the gateway sets itself, from the peer or (trusted proxies only) their copies.
_FORWARDING_SET = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
# The rest of the family upstream proxy middleware believes (Werkzeug ProxyFix, Django, Express
# `trust proxy`): passed from trusted proxies only, like every other `X-Forwarded-*`.
_FORWARDED_OTHERS = frozenset({"forwarded", "x-real-ip"})
_FORWARDED_PREFIX = "x-forwarded-"
# Set by the gateway itself (or by the HTTP client from the body), never copied from the client.
_ALWAYS_SET = frozenset({"host", "expect", "cookie", "x-request-id"})
# Printable ASCII other than `%` stays as it is, so an encoded email still reads `j%C3%B6rg@example.com`.
_KEEP_IN_IDENTITY = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def fold(name: str) -> str:
    """The name as WSGI/CGI/PHP servers compare it: case-folded, `_` and `.` read as `-`."""
    return name.lower().replace("_", "-").replace(".", "-")


def encode_identity(value: str) -> str:
    """ASCII values as they are; others RFC 8187-style: UTF-8, percent-encoded (`%` and controls too)."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=_KEEP_IN_IDENTITY)


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated caller as the identity headers carry it."""

    user_id: str
    email: str
    session_id: str
    roles: tuple[str, ...] = ()
    # A machine client (client credentials) carries its id and scopes instead of the user headers.
    client_id: str = ""
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the forwarding headers are computed from: the direct peer and the request as received."""

    peer: str
    trusted: bool  # the peer is one of server.trusted_proxies
    secure: bool  # the client connection is TLS
    host: str  # the client's Host header, "" when absent
    request_id: str


class HeaderPolicy:
    """One config's request-header rules, compiled once; `upstream_headers` applies them."""

    def __init__(self, cfg: Config) -> None:
        ih = cfg.identity_headers
        self._identity_names = ih.names()
        identity = frozenset(fold(n) for n in self._identity_names)
        # Lower-case names never copied from a client: the gateway sets them (or strips them) itself.
        self._strip = HOP_BY_HOP | _ALWAYS_SET | _FORWARDING_SET | identity
        # Folded names that an odd spelling (`_`, `.`) must not reach, even from a trusted proxy.
        self._collide = self._strip | _FORWARDED_OTHERS
        self._drop_odd = cfg.server.underscore_headers == "drop"
        origin = cfg.server.public_origin
        self._public_host = urlsplit(origin).netloc if origin else None
        self._gateway_cookies = frozenset({cfg.cookies.access_name, cfg.cookies.refresh_name, cfg.cookies.flow_name})

    def upstream_headers(
        self,
        pairs: Iterable[tuple[str, str]],
        facts: RequestFacts,
        identity: Identity | None,
        *,
        forward_authorization: bool,
        preserve_host: bool,
    ) -> list[tuple[str, str]]:
        """The header list for the upstream: client headers that pass, then the gateway's own."""
        pairs = list(pairs)
        named: set[str] = set()
        forwarded_for: list[str] = []
        proto = host = None
        cookies: list[str] = []
        for name, value in pairs:
            low = name.lower()
            if low == "connection":
                named.update(fold(t.strip()) for t in value.split(",") if t.strip())
            elif low == "cookie":
                cookies.append(value)
            elif facts.trusted:
                if low == "x-forwarded-for":
                    forwarded_for.append(value)
                elif low == "x-forwarded-proto" and proto is None:
                    proto = value.split(",")[0].strip()
                elif low == "x-forwarded-host" and host is None:
                    host = value.split(",")[0].strip()
        out: list[tuple[str, str]] = []
        trusted = facts.trusted
        for name, value in pairs:
            low = name.lower()
            if low in self._strip:
                continue
            if "_" in low or "." in low:
                if self._drop_odd:
                    continue
                low = fold(low)
                if low in self._collide or low.startswith(_FORWARDED_PREFIX):
                    continue
            elif not trusted and (low in _FORWARDED_OTHERS or low.startswith(_FORWARDED_PREFIX)):
                continue
            if named and low in named:
                continue
            if low == "authorization" and not forward_authorization:
                continue
            out.append((name, value))
        kept = self._filter_cookies(cookies)
        if kept:
            out.append(("Cookie", kept))
        peer = facts.peer
        out.append(("X-Forwarded-For", ", ".join([*forwarded_for, peer]) if forwarded_for else peer))
        out.append(("X-Forwarded-Proto", proto or ("https" if facts.secure else "http")))
        fwd_host = self._public_host or host or facts.host
        if fwd_host:
            out.append(("X-Forwarded-Host", fwd_host))
        out.append(("X-Request-Id", facts.request_id))
        if preserve_host and facts.host:
            out.append(("Host", facts.host))
        if identity is not None:
            uid, email, sid, roles, client_id, scopes = self._identity_names
            if identity.client_id:
                out.append((client_id, encode_identity(identity.client_id)))
                out.append((scopes, encode_identity(" ".join(identity.scopes))))
            else:
                out.append((uid, encode_identity(identity.user_id)))
                out.append((email, encode_identity(identity.email)))
                out.append((sid, encode_identity(identity.session_id)))
                out.append((roles, encode_identity(",".join(identity.roles))))
        return out

    def _filter_cookies(self, values: list[str]) -> str:
        """The Cookie header without the gateway's own cookies; other cookies pass byte for byte."""
        kept: list[str] = []
        for value in values:
            for pair in value.split(";"):
                name = pair.split("=", 1)[0].strip()
                if pair.strip() and name not in self._gateway_cookies:
                    kept.append(pair.strip())
        return "; ".join(kept)
