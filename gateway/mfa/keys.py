"""The second factors' app keys.

Must not: hold values or logic; the app's `cleanup_ctx` steps fill them.
"""

from __future__ import annotations

from aiohttp import web

from gateway.mfa.passkeys import PasskeyService
from gateway.mfa.service import MfaService

__all__ = ["MFA", "PASSKEYS"]

MFA = web.AppKey("mfa", MfaService)
PASSKEYS = web.AppKey("passkeys", PasskeyService)
