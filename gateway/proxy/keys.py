"""The proxy's app keys: the live route table, the upstream pool and the open WebSockets.

Must not: hold values or logic; the app's `cleanup_ctx` steps fill them.
"""

from __future__ import annotations

from aiohttp import web

from gateway.proxy.upstream.pool import UpstreamPool

__all__ = ["LIVE_ROUTES", "UPSTREAM_POOL", "WEBSOCKETS", "WEBSOCKET_GRANTS"]

# The route table and forwarder, a mutable holder so SIGHUP can swap them while the app runs.
LIVE_ROUTES = web.AppKey("live_routes", object)
# Open proxied WebSockets by session id, so a revocation can close them at once.
WEBSOCKETS = web.AppKey("websockets", dict[str, set[web.WebSocketResponse]])
# The same sockets by the subject and grant version (`rv`) of the token that opened them, so a role
# change or a removed machine client closes them as it refuses the older tokens.
WEBSOCKET_GRANTS = web.AppKey("websocket_grants", dict[web.WebSocketResponse, tuple[str, int]])
# Keep-alive connections for plain HTTP forwarding (WebSockets use CLIENT).
UPSTREAM_POOL = web.AppKey("upstream_pool", UpstreamPool)
