"""The streaming forwarder: header policy both ways, HTTP bodies and WebSockets, upstream failures.

Must not: decide who the caller is (it receives the Principal or None), buffer a body of unknown
size, or let a client-sent identity header, gateway cookie or hop-by-hop header through.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Config, RouteConfig
from gateway.core.errors import RequestTimeout, UpstreamError, UpstreamTimeout
from gateway.core.log import proxy_log
from gateway.http.auth import peer_trusted
from gateway.http.keys import CLIENT, REQUEST_ID, UPSTREAM_SECONDS
from gateway.proxy.headers import HOP_BY_HOP, HeaderPolicy, Identity, RequestFacts
from gateway.proxy.keys import UPSTREAM_POOL, WEBSOCKET_GRANTS, WEBSOCKETS
from gateway.proxy.paths import RouteTable, Target
from gateway.proxy.upstream.pool import UpstreamBroken, UpstreamResponse, UpstreamStalled
from gateway.tokens.keyring import Principal

__all__ = ["HOP_BY_HOP", "WS_CLOSE_REVOKED", "Forwarder", "close_stale_websockets", "close_websockets"]

_SMALL_BODY = 64 * 1024
# Close codes that are legal to send in a close frame (RFC 6455 7.4); others are reported as 1011.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
WS_CLOSE_REVOKED = 1008


@dataclass(frozen=True, slots=True)
class _RoutePlan:
    """Per-route values computed once at startup."""

    route: RouteConfig
    origin: str
    base_path: str
    seconds: float
    ws_timeout: aiohttp.ClientWSTimeout


class Forwarder:
    """Forwards normalized requests to their route's upstream."""

    def __init__(self, cfg: Config, *, observe: Callable[[str, float], None] = lambda route, seconds: None) -> None:
        self.cfg = cfg
        self._observe = observe
        self._headers = HeaderPolicy(cfg)
        self._gateway_cookies = {cfg.cookies.access_name, cfg.cookies.refresh_name}
        self._plans: dict[str, _RoutePlan] = {}
        for route in cfg.routes:
            url = URL(route.upstream)
            t = route.timeout.total_seconds()
            self._plans[route.prefix] = _RoutePlan(
                route=route,
                origin=str(url.origin()),
                base_path=url.raw_path.rstrip("/"),
                seconds=t,
                ws_timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=t),
            )

    def upstream_url(self, route: RouteConfig, target: Target) -> URL:
        """The exact URL sent upstream: origin, base path, the authorised path re-encoded, the raw query."""
        # encoded=True: yarl and aiohttp must send these bytes as they are, not re-normalise them.
        return URL(self._plans[route.prefix].origin + self.upstream_target(route, target), encoded=True)

    def upstream_target(self, route: RouteConfig, target: Target) -> str:
        """The request target sent upstream: base path, the authorised path re-encoded, the raw query."""
        path = self._plans[route.prefix].base_path + RouteTable.upstream_path(route, target.encoded)
        return path + "?" + target.query if target.query else path

    def request_headers(self, request: web.Request, route: RouteConfig, principal: Principal | None) -> CIMultiDict[str]:
        """The upstream's request headers, by the config's HeaderPolicy (gateway/proxy/headers.py)."""
        facts = RequestFacts(
            peer=request.remote or "",
            trusted=peer_trusted(request, self.cfg),
            secure=request.secure,
            host=request.headers.get("Host", ""),
            request_id=request[REQUEST_ID],
        )
        identity = (
            None
            if principal is None
            else Identity(
                principal.sub, principal.email, principal.sid, principal.roles,
                client_id=principal.client_id, scopes=principal.scopes,
            )
        )  # fmt: skip
        return CIMultiDict(
            self._headers.upstream_headers(
                request.headers.items(), facts, identity,
                forward_authorization=route.forward_authorization, preserve_host=route.preserve_host,
            )
        )  # fmt: skip

    def response_headers(self, upstream: UpstreamResponse) -> CIMultiDict[str]:
        """Upstream headers minus hop-by-hop and minus any Set-Cookie naming a gateway cookie."""
        named = {t.strip().lower() for v in upstream.headers.getall(hdrs.CONNECTION, ()) for t in v.split(",")}
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in upstream.headers.items():
            low = name.lower()
            if low in HOP_BY_HOP or low in named:
                continue
            if low == "set-cookie" and value.split("=", 1)[0].strip() in self._gateway_cookies:
                proxy_log.warning("dropped upstream Set-Cookie for a gateway cookie")
                continue
            out.add(name, value)
        return out

    async def forward(self, request: web.Request, route: RouteConfig, target: Target, principal: Principal | None) -> web.StreamResponse:
        """Proxies one request; raises UpstreamError/UpstreamTimeout before any byte is sent back."""
        if request.headers.get("Upgrade", "").lower() == "websocket" and request.method == "GET":
            return await self._websocket(request, route, target, principal)
        plan = self._plans[route.prefix]
        upstream_target = self.upstream_target(route, target)
        headers = self.request_headers(request, route, principal)
        pool = request.app[UPSTREAM_POOL]
        started = time.perf_counter()
        try:
            data = await self._body(request, plan.seconds) if request.body_exists else None
            upstream = await pool.request(
                plan.origin, request.method, upstream_target, headers, data, timeout=plan.seconds
            )
        except _ClientBodyTimeout as exc:
            raise RequestTimeout("the request body stalled") from exc
        except UpstreamStalled as exc:
            raise UpstreamTimeout("the upstream did not answer in time") from exc
        except UpstreamBroken as exc:
            proxy_log.warning("upstream error route=%s error=%s", route.prefix, exc)
            raise UpstreamError("the upstream could not be reached") from exc
        elapsed = time.perf_counter() - started
        request[UPSTREAM_SECONDS] = elapsed
        self._observe(route.prefix, elapsed)
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _body(self, request: web.Request, gap: float | None) -> bytes | AsyncIterator[bytes]:
        """A chunked body up to server.buffer_request_body whole (sent with Content-Length, since many
        WSGI servers cannot read chunked input); any other body as a stream. Holds at most the limit
        plus one read."""
        body = _client_body(request, gap)
        limit = self.cfg.server.buffer_request_body
        if request.content_length is not None or limit <= 0:
            return body
        chunks: list[bytes] = []
        size = 0
        async for chunk in body:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return _chained(chunks, body)
        return b"".join(chunks)

    async def _relay(self, request: web.Request, upstream: UpstreamResponse) -> web.StreamResponse:
        headers = self.response_headers(upstream)
        headers["X-Request-Id"] = request[REQUEST_ID]
        length = upstream.content_length
        if length is not None and length <= _SMALL_BODY and request.method != "HEAD":
            try:
                body = await upstream.read()
            except UpstreamStalled as exc:
                raise UpstreamTimeout("the upstream stalled while sending its answer") from exc
            except UpstreamBroken as exc:
                proxy_log.warning("upstream answer refused request_id=%s error=%s", request[REQUEST_ID], exc)
                raise UpstreamError("the upstream broke off its answer") from exc
            headers.pop("Content-Length", None)
            # Where the upstream sent no Content-Type, aiohttp adds application/octet-stream to a
            # non-empty body; that is the safe reading (no sniffing into HTML), so it is left so.
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        await response.prepare(request)
        try:
            async for chunk in upstream.chunks():
                await response.write(chunk)
        except (UpstreamBroken, aiohttp.ClientError, ConnectionResetError) as exc:
            # Headers are already out: the only honest signal left is to cut the connection, so a
            # truncated body is never mistaken for a complete one.
            proxy_log.warning("upstream body broke off request_id=%s error=%s", request[REQUEST_ID], type(exc).__name__)
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response

    async def _websocket(self, request: web.Request, route: RouteConfig, target: Target, principal: Principal | None) -> web.StreamResponse:
        plan = self._plans[route.prefix]
        url = self.upstream_url(route, target)
        headers = self.request_headers(request, route, principal)
        for name in list(headers):
            if name.lower().startswith("sec-websocket-"):
                del headers[name]
        protocols = tuple(
            p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",") if p.strip()
        )
        session = request.app[CLIENT]
        try:
            upstream = await session.ws_connect(
                url.with_scheme("wss" if url.scheme == "https" else "ws"), headers=headers, protocols=protocols,
                timeout=plan.ws_timeout, autoping=True, max_msg_size=0,
            )  # fmt: skip
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("the upstream did not accept the WebSocket in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("the upstream refused the WebSocket") from exc
        client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (), max_msg_size=0)
        registry = request.app[WEBSOCKETS]
        grants = request.app[WEBSOCKET_GRANTS]
        # Anonymous sockets are registered under "" so that shutdown can close them too.
        key = principal.sid if principal is not None else ""
        try:
            await client.prepare(request)
            registry.setdefault(key, set()).add(client)
            if principal is not None:
                grants[client] = (principal.sub, principal.rv)
            await _pump(client, upstream)
        finally:
            grants.pop(client, None)
            peers = registry.get(key)
            if peers is not None:
                peers.discard(client)
                if not peers:
                    registry.pop(key, None)
            await upstream.close()
        return client


class _ClientBodyTimeout(Exception):
    """The client paused longer than the route timeout while sending its body."""


async def _client_body(request: web.Request, gap: float | None) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client that stalls longer than `gap` between chunks is cut off,
    so a slow sender cannot pin a connection to the upstream forever."""
    content = request.content
    while True:
        try:
            async with asyncio.timeout(gap):
                chunk = await content.readany()
        except TimeoutError as exc:
            raise _ClientBodyTimeout from exc
        if not chunk:
            return
        yield chunk


async def _chained(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks already read, then the rest of the body as it arrives."""
    while first:
        yield first.pop(0)
    async for chunk in rest:
        yield chunk


async def _relay(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    *,
    fallback: int,
) -> None:
    """Copies messages from `source` to `sink` until `source` closes, then closes `sink` with its code
    (a code that may not be sent in a close frame becomes `fallback`)."""
    async for msg in source:
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
    code = source.close_code or fallback
    await sink.close(code=code if code in _SENDABLE or 3000 <= code < 5000 else fallback)


async def _pump(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Relays messages both ways until either side closes, then closes the other with the same code."""
    tasks = [
        asyncio.create_task(_relay(client, upstream, fallback=1000)),
        asyncio.create_task(_relay(upstream, client, fallback=1011)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not client.closed:
            await client.close(code=1011)


async def close_websockets(
    app: web.Application, session_ids: list[str], *, code: int = WS_CLOSE_REVOKED, reason: bytes = b"session revoked"
) -> None:
    """Closes every proxied WebSocket of these sessions (their access was revoked, or the gateway stops)."""
    registry = app[WEBSOCKETS]
    sockets = [ws for sid in session_ids for ws in registry.pop(sid, ())]
    # Concurrently: each close waits for the peer's reply, and one slow peer must not delay the rest.
    await asyncio.gather(*(ws.close(code=code, message=reason) for ws in sockets), return_exceptions=True)


async def close_stale_websockets(app: web.Application, refuses: Callable[[str, int], bool]) -> None:
    """Closes every proxied WebSocket opened with a token that `refuses(subject, rv)` now refuses
    (its user's roles changed, or its machine client was removed): the socket outlived the token's
    grants, and the next token it could get carries different ones."""
    owners = app[WEBSOCKET_GRANTS]
    stale = [ws for ws, (subject, rv) in list(owners.items()) if refuses(subject, rv)]
    for ws in stale:
        owners.pop(ws, None)
    await asyncio.gather(
        *(ws.close(code=WS_CLOSE_REVOKED, message=b"access changed") for ws in stale), return_exceptions=True
    )
