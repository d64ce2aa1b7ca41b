"""Self-service accounts' app key.

Must not: hold values or logic; the app's `cleanup_ctx` steps fill it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.accounts.service import AccountService

__all__ = ["ACCOUNTS"]

ACCOUNTS = web.AppKey("accounts", AccountService)
