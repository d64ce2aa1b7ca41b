"""The Python baseline: a plain aiohttp pass-through reverse proxy with no auth at all.

What a person would write in an afternoon: one ClientSession, forward method/path/headers/body,
copy status and headers back minus hop-by-hop ones, body read whole (the simplest, and for small
bodies the fastest, way). No auth, no routing, no logging of its own.

    python bench/plain_proxy.py --port 8001 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        body = request.content if request.body_exists else None
        async with request.app["session"].request(
            request.method, upstream + request.rel_url.raw_path_qs, headers=headers, data=body, allow_redirects=False
        ) as upstream_response:
            out_headers = [(k, v) for k, v in upstream_response.headers.items() if k.lower() not in HOP_BY_HOP]
            return web.Response(status=upstream_response.status, headers=out_headers, body=await upstream_response.read())

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.upstream.rstrip("/")), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
