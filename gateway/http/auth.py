"""Per-request authentication: which token a request carries, whose it is, and whether it may act.

Must not: touch the store (revocation is an in-memory set lookup), or accept a token from a URL.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from gateway.config import Config
from gateway.core.errors import BadRequest, CsrfFailed, TokenInvalid, TokenMissing
from gateway.http.keys import CLOCK, CONFIG, GRANTS, KEYRING, PRINCIPAL, REVOKED
from gateway.tokens.keyring import Principal

__all__ = [
    "UNSAFE_METHODS",
    "authenticate",
    "check_origin",
    "client_ip",
    "extract_token",
    "own_origin",
    "peer_trusted",
]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Keyed by the id of the trusted_proxies tuple; each entry holds that tuple too, so it cannot be
# freed and its id handed to another config's tuple (after a reload) while the entry exists.
_trust_cache: dict[tuple[int, str], tuple[object, bool]] = {}


def _peer(request: web.BaseRequest) -> str:
    return request.remote or ""


def peer_trusted(request: web.BaseRequest, cfg: Config) -> bool:
    """Whether the direct peer is one of `server.trusted_proxies` (cached per address)."""
    nets = cfg.server.trusted_proxies
    if not nets:
        return False
    peer = _peer(request)
    key = (id(nets), peer)
    entry = _trust_cache.get(key)
    if entry is not None:
        return entry[1]
    try:
        addr = ipaddress.ip_address(peer)
        hit = any(addr in net for net in nets)
    except ValueError:
        hit = False
    if len(_trust_cache) > 10_000:
        _trust_cache.clear()
    _trust_cache[key] = (nets, hit)
    return hit


def client_ip(request: web.BaseRequest, cfg: Config) -> str:
    """The client's address: the peer, or behind trusted proxies the last hop they did not add."""
    peer = _peer(request)
    if not peer_trusted(request, cfg):
        return peer
    hops = [h.strip() for v in request.headers.getall(hdrs.X_FORWARDED_FOR, []) for h in v.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            addr = ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not any(addr in net for net in cfg.server.trusted_proxies):
            return hop
    return hops[0] if hops else peer


def own_origin(request: web.BaseRequest, cfg: Config) -> str:
    """`server.public_origin`, else scheme and host as the client used them."""
    if cfg.server.public_origin:
        return cfg.server.public_origin
    scheme = "https" if request.secure else "http"
    host = request.headers.get(hdrs.HOST, "")
    if peer_trusted(request, cfg):
        scheme = request.headers.get(hdrs.X_FORWARDED_PROTO, scheme).split(",")[0].strip().lower() or scheme
        host = request.headers.get(hdrs.X_FORWARDED_HOST, host).split(",")[0].strip() or host
    return f"{scheme}://{host.lower()}"


def check_origin(request: web.BaseRequest, cfg: Config) -> None:
    """Raises CsrfFailed unless Origin (else Referer) names the gateway itself or a trusted origin."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        referer = request.headers.get(hdrs.REFERER)
        if referer:
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
    if not origin or origin == "null":
        raise CsrfFailed("a cookie-authenticated request needs an Origin or Referer header from this site")
    origin = origin.strip().lower().rstrip("/")
    if origin != own_origin(request, cfg) and origin not in cfg.csrf.trusted_origins:
        raise CsrfFailed("the request comes from an origin this gateway does not trust")


def extract_token(request: web.BaseRequest, cfg: Config) -> tuple[str | None, bool]:
    """(token, came_from_cookie): Bearer first, then the access cookie; two Authorization headers are 400."""
    values = request.headers.getall(hdrs.AUTHORIZATION, ())
    if len(values) > 1:
        raise BadRequest("more than one Authorization header")
    if values:
        scheme, _, credentials = values[0].strip().partition(" ")
        if scheme.lower() == "bearer":
            token = credentials.strip()
            if not token:
                raise TokenInvalid("the Bearer token is empty")
            return token, False
    cookie = _access_cookie(request, cfg.cookies.access_name)
    if cookie:
        return cookie, True
    return None, False


# Cookie header -> the access cookie in it. A browser sends the same Cookie header on every request
# until its token rotates, and aiohttp's parse (Morsels for every cookie) costs more than the cached
# token check; the value is a pure function of the header, so caching it changes no answer.
_COOKIE_CACHE: dict[tuple[str, str], str | None] = {}
_COOKIE_CACHE_SIZE = 1024
_COOKIE_CACHE_MAX_HEADER = 4096  # bounds the cache at a few MB whatever clients send
_MISSING = object()


def _access_cookie(request: web.BaseRequest, name: str) -> str | None:
    header = request.headers.get(hdrs.COOKIE)
    if header is None:
        return None
    key = (header, name)
    found = _COOKIE_CACHE.get(key, _MISSING)
    if found is _MISSING:
        found = request.cookies.get(name)
        if len(header) <= _COOKIE_CACHE_MAX_HEADER:
            if len(_COOKIE_CACHE) >= _COOKIE_CACHE_SIZE:
                _COOKIE_CACHE.clear()
            _COOKIE_CACHE[key] = found
    return found  # type: ignore[return-value]


def authenticate(request: web.Request, *, required: bool, csrf: bool = True) -> Principal | None:
    """The caller's Principal (also stored under PRINCIPAL), None when anonymous and allowed."""
    app = request.app
    cfg = app[CONFIG]
    token, from_cookie = extract_token(request, cfg)
    if token is None:
        if required:
            raise TokenMissing("an access token is required")
        return None
    principal = app[KEYRING].verify_access_token(token, now=app[CLOCK]())
    if principal.sid in app[REVOKED]:
        raise TokenInvalid("the session of this access token was revoked")
    if app[GRANTS].refuses(principal.sub, principal.rv):
        raise TokenInvalid("the roles or the client of this access token changed; refresh it")
    if csrf and from_cookie and (request.method in UNSAFE_METHODS or request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"):
        check_origin(request, cfg)
    request[PRINCIPAL] = principal
    return principal
