"""Federated login's app key.

Must not: hold values or logic; the app's `cleanup_ctx` steps fill it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.federation.service import FederationService

__all__ = ["FEDERATION"]

# Federated login (OpenID Connect): the configured providers and the rules of their logins.
FEDERATION = web.AppKey("federation", FederationService)
