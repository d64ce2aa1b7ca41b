"""Machine clients' app key.

Must not: hold values or logic; the app's `cleanup_ctx` steps fill it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.clients.service import ClientService

__all__ = ["CLIENTS"]

# Machine clients (client credentials).
CLIENTS = web.AppKey("clients", ClientService)
