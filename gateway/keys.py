"""Every typed `web.AppKey` and `web.RequestKey` of the gateway, in one place.

Must not: hold values or logic; the app's `cleanup_ctx` steps fill the app keys.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import ClientSession, web

from gateway.accounts.service import AccountService
from gateway.clients import ClientService
from gateway.config import Config
from gateway.federation.service import FederationService
from gateway.grants import StaleGrants
from gateway.metrics import Metrics
from gateway.mfa.passkeys import PasskeyService
from gateway.mfa.service import MfaService
from gateway.revocations import RevokedSessions
from gateway.sessions import SessionService
from gateway.store import Store
from gateway.tokens import KeyRing, Principal
from gateway.upstream_pool import UpstreamPool

__all__ = [
    "ACCOUNTS",
    "CLIENT",
    "CLIENTS",
    "CLOCK",
    "CONFIG",
    "FEDERATION",
    "GRANTS",
    "KEYRING",
    "LIVE_ROUTES",
    "PRINCIPAL",
    "REQUEST_ID",
    "REVOKED",
    "ROUTE_LABEL",
    "UPSTREAM_SECONDS",
    "METRICS",
    "MFA",
    "PASSKEYS",
    "SESSIONS",
    "STORE",
    "WEBSOCKETS",
    "WEBSOCKET_GRANTS",
    "UPSTREAM_POOL",
]

CONFIG = web.AppKey("config", Config)
# Epoch seconds; tests inject a fake clock to move time without sleeping.
CLOCK = web.AppKey("clock", Callable[[], float])
KEYRING = web.AppKey("keyring", KeyRing)
STORE = web.AppKey("store", Store)  # type: ignore[type-abstract]
SESSIONS = web.AppKey("sessions", SessionService)
CLIENT = web.AppKey("client", ClientSession)
MFA = web.AppKey("mfa", MfaService)
PASSKEYS = web.AppKey("passkeys", PasskeyService)
METRICS = web.AppKey("metrics", Metrics)
# The route table and forwarder, a mutable holder so SIGHUP can swap them while the app runs.
LIVE_ROUTES = web.AppKey("live_routes", object)
REVOKED = web.AppKey("revoked", RevokedSessions)
# Federated login (OpenID Connect): the configured providers and the rules of their logins.
FEDERATION = web.AppKey("federation", FederationService)
# Subjects whose older access tokens are refused (roles changed, machine client removed).
GRANTS = web.AppKey("grants", StaleGrants)
# Machine clients (client credentials).
CLIENTS = web.AppKey("clients", ClientService)
# Open proxied WebSockets by session id, so a revocation can close them at once.
WEBSOCKETS = web.AppKey("websockets", dict[str, set[web.WebSocketResponse]])
# The same sockets by the subject and grant version (`rv`) of the token that opened them, so a role
# change or a removed machine client closes them as it refuses the older tokens.
WEBSOCKET_GRANTS = web.AppKey("websocket_grants", dict[web.WebSocketResponse, tuple[str, int]])
# Keep-alive connections for plain HTTP forwarding (WebSockets use CLIENT).
UPSTREAM_POOL = web.AppKey("upstream_pool", UpstreamPool)

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
# The configured prefix that served the request ("auth", "internal" or "none" otherwise): a bounded metric label.
ROUTE_LABEL = web.RequestKey("route_label", str)
UPSTREAM_SECONDS = web.RequestKey("upstream_seconds", float)
# issue 12: self-service accounts (gateway/accounts)
ACCOUNTS = web.AppKey("accounts", AccountService)
