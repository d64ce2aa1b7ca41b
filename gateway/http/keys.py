"""The cross-cutting typed keys: what the edge and more than one capability read from the app or a request.

Must not: hold values or logic, or a key that only one capability reads (that key lives in the
capability's own `keys.py`); the app's `cleanup_ctx` steps fill the app keys.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import ClientSession, web

from gateway.authz.grants import StaleGrants
from gateway.config import Config
from gateway.core.metrics import Metrics
from gateway.sessions.revocations import RevokedSessions
from gateway.sessions.service import SessionService
from gateway.store import Store
from gateway.tokens.keyring import KeyRing, Principal

__all__ = [
    "CLIENT",
    "CLOCK",
    "CONFIG",
    "GRANTS",
    "KEYRING",
    "METRICS",
    "PRINCIPAL",
    "REQUEST_ID",
    "REVOKED",
    "ROUTE_LABEL",
    "SESSIONS",
    "STORE",
    "UPSTREAM_SECONDS",
]

CONFIG = web.AppKey("config", Config)
# Epoch seconds; tests inject a fake clock to move time without sleeping.
CLOCK = web.AppKey("clock", Callable[[], float])
KEYRING = web.AppKey("keyring", KeyRing)
STORE = web.AppKey("store", Store)
SESSIONS = web.AppKey("sessions", SessionService)
# aiohttp's client, for what the upstream pool does not carry: WebSockets and the identity providers.
CLIENT = web.AppKey("client", ClientSession)
METRICS = web.AppKey("metrics", Metrics)
REVOKED = web.AppKey("revoked", RevokedSessions)
# Subjects whose older access tokens are refused (roles changed, machine client removed).
GRANTS = web.AppKey("grants", StaleGrants)

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
# The configured prefix that served the request ("auth", "internal" or "none" otherwise): a bounded metric label.
ROUTE_LABEL = web.RequestKey("route_label", str)
UPSTREAM_SECONDS = web.RequestKey("upstream_seconds", float)
