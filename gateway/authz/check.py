"""`gateway check-policy`: the decision and deciding rule for a caller, method and path, from config and store.

The caller's token is minted and verified here exactly as the gateway would issue it (roles and their
version from the store, a client's scopes), so the policy sees the same claims a request would carry.

Must not: import aiohttp, or write to the store.
"""

from __future__ import annotations

import argparse
import ipaddress
import time

from gateway.authz.rules import Decision
from gateway.config import Config
from gateway.core.errors import AmbiguousPath, GatewayError
from gateway.proxy.paths import OWN_PATHS, RouteTable, normalize_target, under_prefix
from gateway.sessions.service import normalize_email
from gateway.store import Store
from gateway.tokens.keyring import KeyRing, Principal

__all__ = ["check_policy"]

_SAYS = {"allow": "allow", "deny": "deny", "login": "login required", "mfa": "login required"}


async def _caller(store: Store, keys: KeyRing, args: argparse.Namespace, now: float) -> Principal | None:
    if args.anonymous:
        return None
    if args.email is not None:
        _, key = normalize_email(args.email)
        user = await store.get_user(email_key=key)
        if user is None:
            raise GatewayError(f"no user with email {args.email.strip()}")
        if user.disabled:
            raise GatewayError(f"{user.email} is disabled and cannot log in")
        amr = ("pwd", "otp", "mfa") if args.mfa else ("pwd",)
        token, _ = keys.issue_access_token(
            sub=user.id, sid="check-policy", email=user.email, now=now, amr=amr, roles=user.roles, rv=user.roles_version
        )
        return keys.verify_access_token(token, now=now)
    client = await store.get_client(args.client)
    if client is None:
        raise GatewayError(f"no client {args.client}")
    token, _ = keys.issue_client_token(client_id=client.id, scopes=client.scopes, now=now)
    return keys.verify_access_token(token, now=now)


async def check_policy(cfg: Config, store: Store, keys: KeyRing, args: argparse.Namespace) -> list[str]:
    """The lines to print: the decision, the deciding rule path, and a note for a step-up."""
    try:
        target = normalize_target(args.path if args.path.startswith("/") else "/" + args.path)
    except GatewayError as exc:
        raise GatewayError(f"{args.path}: {exc.description}") from None
    path = target.path
    if under_prefix(path, cfg.server.auth_prefix):
        raise GatewayError(f"{path} is a gateway endpoint under {cfg.server.auth_prefix}, not a route")
    if path in OWN_PATHS:
        raise GatewayError(f"{path} is a gateway endpoint, not a route")
    try:
        route = RouteTable.from_config(cfg).match(path)
    except AmbiguousPath as exc:
        raise GatewayError(f"{path}: refused with 400 {exc.code}: {exc.description}") from None
    if route is None:
        raise GatewayError(f"no route matches {path}")
    where = f"routes[{next(i for i, r in enumerate(cfg.routes) if r is route)}]"
    address = None
    if args.ip is not None:
        try:
            address = ipaddress.ip_address(args.ip)
        except ValueError:
            raise GatewayError(f"--ip {args.ip!r} is not an IP address") from None
    caller = await _caller(store, keys, args, time.time())
    method = args.method.upper()
    if route.auth == "public":
        decision = Decision("allow", where)
    elif caller is None and route.auth == "required":
        decision = Decision("login", where)
    elif route.policy is None:
        decision = Decision("allow", where)
    else:
        decision = route.policy.decide(caller, method, path, lambda: address)
    lines = [_SAYS[decision.outcome], decision.rule]
    if decision.outcome == "mfa":
        lines.append("(admitted after a second factor: log in with one)")
    return lines
