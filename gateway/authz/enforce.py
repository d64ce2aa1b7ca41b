"""Applies a route's policy to a request between authentication and forwarding: the HTTP edge of `rules.py`.

Must not: hold rules (they are compiled in `rules.py`), or read the client address from anything but
`auth.client_ip` (the peer, or behind trusted proxies the real client): a forwarding header from an
untrusted peer can never satisfy `networks`.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from gateway.authz.rules import IpAddress
from gateway.config import RouteConfig
from gateway.core.errors import InsufficientScope, InsufficientUserAuthentication, TokenMissing
from gateway.core.log import auth_log
from gateway.http.auth import client_ip
from gateway.http.keys import CONFIG, METRICS
from gateway.proxy.paths import Target
from gateway.tokens.keyring import Principal

__all__ = ["enforce_policy"]


def enforce_policy(request: web.Request, route: RouteConfig, target: Target, principal: Principal | None) -> None:
    """Returns when the route's policy admits the caller; raises the refusal otherwise (logged and counted)."""
    policy = route.policy
    if policy is None:
        return

    def address() -> IpAddress | None:
        try:
            return ipaddress.ip_address(client_ip(request, request.app[CONFIG]))
        except ValueError:
            return None

    decision = policy.decide(principal, request.method, target.path, address)
    if decision.outcome == "allow":
        return
    reason = {"deny": "insufficient_scope", "login": "missing_token", "mfa": "insufficient_user_authentication"}[decision.outcome]
    request.app[METRICS].policy_refusal(route.prefix, decision.rule, reason)
    auth_log.info(
        "policy refused reason=%s rule=%s route=%s method=%s path=%s sub=%s client_id=%s",
        reason, decision.rule, route.prefix, request.method, target.path,
        principal.sub if principal else None, principal.client_id if principal else None,
    )  # fmt: skip
    if decision.outcome == "login":
        raise TokenMissing("this route needs an identity: log in first")
    if decision.outcome == "mfa":
        raise InsufficientUserAuthentication("this route needs a second factor: log in again with one")
    raise InsufficientScope("the route's policy does not admit this caller")
