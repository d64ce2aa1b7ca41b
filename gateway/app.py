"""`create_app(config)`: the one catch-all handler, its dispatch table, and the app's resources.

Must not: do I/O outside `cleanup_ctx` steps (the key ring reads its key files once, here, before
serving), or let aiohttp's router see a path before `normalize_target` has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.accounts import routes as account_routes
from gateway.accounts.keys import ACCOUNTS
from gateway.accounts.mailer import SmtpMailer
from gateway.accounts.outbox import MailSender
from gateway.accounts.service import AccountService
from gateway.authz.enforce import enforce_policy
from gateway.authz.grants import StaleGrants
from gateway.authz.sync import grants_ctx
from gateway.clients.keys import CLIENTS
from gateway.clients.routes import client_endpoints, clients_ctx
from gateway.config import Config
from gateway.core.errors import Forbidden, GatewayError, MethodNotAllowed, NoRoute, StoreError
from gateway.core.log import store_log
from gateway.core.metrics import Metrics
from gateway.core.tasks import change_window_s, running, spawn
from gateway.federation import routes as federation_routes
from gateway.http.auth import authenticate
from gateway.http.keys import CLIENT, CLOCK, CONFIG, GRANTS, KEYRING, METRICS, REVOKED, ROUTE_LABEL, SESSIONS, STORE
from gateway.http.middleware import error_middleware
from gateway.http.openapi import openapi_document
from gateway.http.request import AUTH_BODY_LIMIT, Handler
from gateway.mfa import routes as mfa_routes
from gateway.mfa.keys import MFA, PASSKEYS
from gateway.mfa.passkeys import PasskeyService
from gateway.mfa.secretbox import SecretBox
from gateway.mfa.service import MfaService
from gateway.proxy.forward import Forwarder, close_websockets
from gateway.proxy.keys import LIVE_ROUTES, UPSTREAM_POOL, WEBSOCKET_GRANTS, WEBSOCKETS
from gateway.proxy.paths import OWN_PATHS, RouteTable, normalize_target, under_prefix
from gateway.proxy.upstream.pool import UpstreamPool
from gateway.server.serving import request_finished, request_started
from gateway.sessions import routes as session_routes
from gateway.sessions.revocations import RevokedSessions
from gateway.sessions.service import SessionService
from gateway.store import open_store
from gateway.tokens.keyring import KeyRing

__all__ = ["KEEPALIVE_TIMEOUT", "create_app", "reload_app"]

_MAX_LINE = 8190
_MAX_FIELD = 8190
_MAX_HEADERS = 100
KEEPALIVE_TIMEOUT = 75.0


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.StreamResponse:
    try:
        await asyncio.wait_for(request.app[STORE].ping(), timeout=2)
    except (StoreError, TimeoutError):
        return web.json_response({"status": "unavailable", "store": "unreachable"}, status=503)
    return web.json_response({"status": "ok"})


_CLIENT_JS = Path(__file__).with_name("static") / "client.js"


@functools.cache
def _client_js_bytes() -> bytes:
    return _CLIENT_JS.read_bytes()


async def _client_js(request: web.Request) -> web.StreamResponse:
    """The browser client module; read once from the package on first use."""
    return web.Response(
        body=_client_js_bytes(), content_type="text/javascript", headers={"Cache-Control": "no-cache"}
    )


async def _metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text, only to peers in `server.metrics_networks` (the peer address, never X-Forwarded-For)."""
    nets = request.app[CONFIG].server.metrics_networks
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        peer = None
    if peer is None or not any(peer in net for net in nets):
        raise Forbidden("metrics are not served to this address")
    metrics = request.app[METRICS]
    metrics.revoked_set.set(len(request.app[REVOKED]))
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document(request.app[CONFIG]))


async def _jwks(request: web.Request) -> web.StreamResponse:
    jwks = request.app[KEYRING].jwks()
    if jwks is None:
        raise NoRoute("no public keys: tokens are signed with HS256")
    return web.json_response(jwks, headers={"Cache-Control": "public, max-age=300"})


class _LiveRoutes:
    """The live config with the route table and forwarder built from it, replaced together on reload."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._metrics = metrics
        # Bound at startup, as the endpoints under it are (a changed auth_prefix needs a restart).
        self._auth_prefix = config.server.auth_prefix
        self.set(config)

    def set(self, config: Config) -> None:
        """Builds the table and forwarder from `config`; in-flight requests keep the pair they started with."""
        self.config = config
        table = RouteTable(config.routes, own_prefix=self._auth_prefix, own_paths=OWN_PATHS)
        self.table, self.forwarder = table, Forwarder(config, observe=self._metrics.observe_upstream)


# Server keys read per request, so a reload applies them; the others are bound when the server starts.
_LIVE_SERVER_KEYS = ("public_origin", "trusted_proxies", "underscore_headers", "buffer_request_body",
                     "metrics_networks", "tls_cert", "tls_key")  # fmt: skip


def reload_app(app: web.Application, new: Config) -> list[str]:
    """Applies a re-read config to a running app, whole: every part (authentication, CSRF, cookies,
    the forwarder and its identity headers, routes, limits, token keys and lifetimes) reads the new
    one from the next request on; established connections stay. Returns the changed keys that are
    bound at startup and so need a restart."""
    old = app[CONFIG]
    keyring = KeyRing(new.tokens)  # raises ConfigError before anything changes
    # One synchronous step, so no request sees part of the old config and part of the new.
    cast(_LiveRoutes, app[LIVE_ROUTES]).set(new)
    with warnings.catch_warnings():
        # aiohttp discourages changing a started app's state (handlers could see it half changed);
        # this is a single assignment made together with the route table and forwarder.
        warnings.simplefilter("ignore", DeprecationWarning)
        app[CONFIG] = new
    app[KEYRING].adopt(keyring)
    app[SESSIONS].cfg = new.tokens
    app[SESSIONS].set_limits(new.limits)
    app[CLIENTS].throttle.set_rate(new.limits.login)
    bound_tables = ("store", "log", "accounts", "email", "identity_providers", "mfa", "webauthn")
    restart = [name for name in bound_tables if getattr(old, name) != getattr(new, name)]
    bound = [f.name for f in dataclasses.fields(old.server) if f.name not in _LIVE_SERVER_KEYS]
    restart += [f"server.{k}" for k in bound if getattr(old.server, k) != getattr(new.server, k)]
    if any(getattr(old.tokens, k) != getattr(new.tokens, k) for k in ("access_ttl", "leeway")):
        restart.append("tokens.access_ttl/leeway (the revocation window)")
    return restart


def create_app(config: Config, *, clock: Callable[[], float] = time.time, keyring: KeyRing | None = None) -> web.Application:
    """The gateway as an aiohttp application; `clock` is injectable for tests."""
    metrics = Metrics()
    app = web.Application(
        client_max_size=AUTH_BODY_LIMIT,
        # auto_decompress=False: a gzip request body must reach the upstream as sent, matching its
        # Content-Encoding header. The size caps answer oversized request lines and headers with 4xx.
        handler_args={
            "auto_decompress": False,
            "max_line_size": _MAX_LINE,
            "max_field_size": _MAX_FIELD,
            "max_headers": _MAX_HEADERS,
            "keepalive_timeout": KEEPALIVE_TIMEOUT,
        },
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[CLOCK] = clock
    app[KEYRING] = keyring or KeyRing(config.tokens)
    # Read once here, like the key ring: the TOTP key may come from the private key file.
    mfa_box = SecretBox.from_config(config.mfa, config.tokens)
    app[REVOKED] = RevokedSessions()
    app[GRANTS] = StaleGrants()
    app[WEBSOCKETS] = {}
    app[WEBSOCKET_GRANTS] = {}
    prefix = config.server.auth_prefix
    endpoints: dict[str, dict[str, Handler]] = {
        **session_routes.auth_endpoints(prefix),
        **client_endpoints(prefix),
        **account_routes.endpoints(prefix),
        **federation_routes.endpoints(prefix, tuple(p.name for p in config.identity_providers)),
        **mfa_routes.endpoints(prefix),
        f"{prefix}/client.js": {"GET": _client_js},
        f"{prefix}/openapi.json": {"GET": _openapi},
        "/.well-known/jwks.json": {"GET": _jwks},
        "/healthz": {"GET": _healthz},
        "/readyz": {"GET": _readyz},
        "/metrics": {"GET": _metrics},
    }
    # The route table refuses these in another case too; one it did not know of could be reached
    # that way through a "/" route, at a case-insensitive upstream's own path of that name.
    if unlisted := sorted(p for p in endpoints if not under_prefix(p, prefix) and p not in OWN_PATHS):
        raise RuntimeError(f"gateway paths missing from gateway.proxy.paths.OWN_PATHS: {unlisted}")
    sessions_prefix = f"{prefix}/sessions/"
    passkeys_prefix = f"{prefix}/passkeys/"
    live = _LiveRoutes(config, metrics)
    app[LIVE_ROUTES] = live

    async def dispatch(request: web.Request) -> web.StreamResponse:
        target = normalize_target(request.raw_path)
        path = target.path
        methods = endpoints.get(path)
        in_auth = under_prefix(path, prefix)
        request[ROUTE_LABEL] = "auth" if in_auth else "internal" if methods is not None else "none"
        if methods is None and in_auth:
            await session_routes.reject_token_in_url(request)
            if path.startswith(sessions_prefix) and "/" not in path[len(sessions_prefix) :]:
                if request.method != "DELETE":
                    raise MethodNotAllowed("use DELETE", allow=("DELETE",))
                return await session_routes.delete_session(request, path[len(sessions_prefix) :])
            if path.startswith(passkeys_prefix) and "/" not in path[len(passkeys_prefix) :]:
                if request.method != "DELETE":
                    raise MethodNotAllowed("use DELETE", allow=("DELETE",))
                return await mfa_routes.delete_passkey(request, path[len(passkeys_prefix) :])
            raise NoRoute(f"no gateway endpoint at {path}")
        if methods is not None:
            if in_auth:
                await session_routes.reject_token_in_url(request)
            handler = methods.get(request.method) or (methods.get("GET") if request.method == "HEAD" else None)
            if handler is None:
                raise MethodNotAllowed(f"{request.method} is not allowed here", allow=tuple(methods))
            return await handler(request)
        route = live.table.match(path)
        if route is None:
            raise NoRoute("no route matches this path")
        request[ROUTE_LABEL] = route.prefix
        principal = None
        if route.auth != "public":
            try:
                principal = authenticate(request, required=route.auth == "required")
            except GatewayError as exc:
                metrics.auth_decision("deny", exc.code)
                raise
            metrics.auth_decision("allow" if principal else "anonymous", "ok")
            enforce_policy(request, route, target, principal)
        return await live.forwarder.forward(request, route, target, principal)

    if config.server.hsts:
        hsts = config.server.hsts

        async def add_hsts(request: web.Request, response: web.StreamResponse) -> None:
            response.headers["Strict-Transport-Security"] = hsts

        # on_response_prepare reaches streamed and WebSocket answers too; only registered when asked for.
        app.on_response_prepare.append(add_hsts)
    guard = error_middleware(metrics=metrics, log_access=config.log.access_log)

    async def handle(request: web.Request) -> web.StreamResponse:
        # The one middleware is composed here rather than registered: aiohttp would rebuild the
        # middleware chain for every request, a measurable share of the proxy's per-request cost.
        request_started(request.protocol)
        try:
            return await guard(request, dispatch)
        finally:
            request_finished(request.protocol)

    _skip_router(app, app.router.add_route("*", "/{tail:.*}", handle))
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_accounts_ctx)
    app.cleanup_ctx.append(functools.partial(_mfa_ctx, box=mfa_box))
    app.cleanup_ctx.append(_client_ctx)
    app.cleanup_ctx.append(_revocation_ctx)
    if config.identity_providers:
        app.cleanup_ctx.append(federation_routes.federation_ctx)
    app.cleanup_ctx.append(grants_ctx)
    app.cleanup_ctx.append(clients_ctx)
    app.on_shutdown.append(_close_all_websockets)
    return app


def _skip_router(app: web.Application, route: web.AbstractRoute) -> None:
    """Every request goes to the one catch-all handler, which dispatches on its own table; aiohttp's
    router would still walk its resource index and run the route's regex per request to find it."""
    empty: dict[str, str] = {}

    async def resolve(request: web.Request) -> web.UrlMappingMatchInfo:
        return web.UrlMappingMatchInfo(empty, route)

    app.router.resolve = resolve  # type: ignore[method-assign]


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    store = await open_store(cfg.store)
    app[STORE] = store

    def on_revoke(ids: list[str]) -> None:
        new = app[REVOKED].add(ids, at=app[CLOCK]())
        if new:
            spawn(close_websockets(app, new))

    app[SESSIONS] = SessionService(
        store=store, keys=app[KEYRING], config=cfg, on_revoke=on_revoke, on_event=app[METRICS].session_event, clock=app[CLOCK]
    )
    try:
        yield
    finally:
        await store.aclose()


async def _accounts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Self-service accounts and the outbox sender task (issue 12); closed before the store."""
    cfg = app[CONFIG]
    sender = MailSender(store=app[STORE], mailer=SmtpMailer(cfg.email.smtp_url), clock=app[CLOCK])
    accounts = AccountService(store=app[STORE], sessions=app[SESSIONS], config=cfg, clock=app[CLOCK], on_mail=sender.wake)
    app[ACCOUNTS] = accounts
    async with running(sender.run()):
        try:
            yield
        finally:
            await accounts.drain()  # before the sender stops: what it queued still gets sent


async def _mfa_ctx(app: web.Application, *, box: SecretBox) -> AsyncIterator[None]:
    """The second-factor services, on the store that `_store_ctx` opened."""
    store, cfg = cast(Any, app[STORE]), app[CONFIG]  # both backends implement MfaStore too
    on_event = app[METRICS].mfa_event
    app[MFA] = MfaService(store=store, sessions=app[SESSIONS], config=cfg, box=box, on_event=on_event, clock=app[CLOCK])
    app[PASSKEYS] = PasskeyService(store=store, sessions=app[SESSIONS], config=cfg, on_event=on_event, clock=app[CLOCK])
    yield


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, enable_cleanup_closed=False)
    # One pooled session per app; auto_decompress=False keeps Content-Encoding and bodies as the upstream sent them,
    # and a dummy cookie jar stops cookies of one client leaking into another's requests.
    session = aiohttp.ClientSession(
        # The client's own defaults would add headers the client never sent; set once, not per request.
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None)
    )
    app[CLIENT] = session
    # Plain HTTP forwarding has its own keep-alive pool; the session above serves WebSockets.
    pool = app[UPSTREAM_POOL] = UpstreamPool(idle_timeout=30)
    try:
        yield
    finally:
        await pool.close()
        await session.close()


async def _revocation_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keeps REVOKED in step with the store's revocation log, for revocations made by other processes."""
    cfg = app[CONFIG]
    store = app[STORE]
    revoked = app[REVOKED]
    window = change_window_s(cfg.tokens)
    events = await store.revocations_since(0, not_before=app[CLOCK]() - window)
    revoked.add([e.session_id for e in events], at=app[CLOCK]())
    revoked.last_seq = events[-1].seq if events else revoked.last_seq
    interval = cfg.server.revocation_poll.total_seconds()

    async def poll() -> None:
        last_prune = last_count = 0.0
        while True:
            await asyncio.sleep(interval)
            now = app[CLOCK]()
            try:
                events = await store.revocations_since(revoked.last_seq)
                if events:
                    revoked.last_seq = events[-1].seq
                    new = revoked.add([e.session_id for e in events], at=now)
                    if new:
                        spawn(close_websockets(app, new))  # the poll keeps its pace, as for grants
                if now - last_count > 15:
                    last_count = now
                    app[METRICS].active_sessions.set(await store.count_live_sessions(now=now))
                if now - last_prune > 3600:
                    last_prune = now
                    revoked.prune(before=now - window)
                    await store.prune(now=now, revocations_before=now - window)
            except StoreError as exc:
                store_log.warning("revocation poll failed: %s", exc)

    async with running(poll()):
        yield


async def _close_all_websockets(app: web.Application) -> None:
    await close_websockets(app, list(app[WEBSOCKETS]), code=1001, reason=b"gateway shutting down")
