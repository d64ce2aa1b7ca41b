"""Microseconds per route-policy decision for a few rule shapes (timeit, one process, no server).

Run: .venv/bin/python bench/policy_cost.py
"""

from __future__ import annotations

import ipaddress
import timeit
from dataclasses import dataclass, field
from typing import Any

from gateway.authz.rules import compile_policy


@dataclass(frozen=True)
class _Caller:
    email: str = "ann@example.com"
    roles: tuple[str, ...] = ("auditor",)
    scopes: tuple[str, ...] = ()
    client_id: str = ""
    amr: tuple[str, ...] = ("pwd",)
    claims: dict[str, Any] = field(default_factory=lambda: {"tier": "gold"})


SHAPES: dict[str, tuple[Any, Any]] = {
    "one allow rule (roles), admitted": ([{"roles": ["auditor"]}], None),
    "one allow rule (roles), refused": ([{"roles": ["admin"]}], None),
    "bench route: 2 deny + 2 allow, admitted by allow[1]": (
        [{"roles": ["admin"]}, {"email_domains": ["example.com"], "methods": ["GET", "HEAD"]}],
        [{"paths": ["/pol/admin/**"], "roles": ["auditor"]}, {"methods": ["DELETE"]}],
    ),
    "SPEC example (3 rules), auditor GET": (
        [{"roles": ["admin"]}, {"emails": ["ops@example.com"], "methods": ["GET"]}, {"roles": ["auditor"], "methods": ["GET"]}],
        [{"methods": ["DELETE"], "roles": ["auditor"]}],
    ),
    "10 path-glob allow rules, last matches": ([{"paths": [f"/api/r{i}/**"]} for i in range(9)] + [{"paths": ["/api/**/x"]}], None),
    "networks + claims + paths in one rule": ([{"networks": ["10.0.0.0/8"], "claims": {"tier": "gold"}, "paths": ["/api/**"]}], None),
}


def main() -> None:
    who = _Caller()
    address = ipaddress.ip_address("10.1.2.3")
    n = 200_000
    for label, (allow, deny) in SHAPES.items():
        problems: list[str] = []
        policy = compile_policy(allow, deny, where="routes[0]", problems=problems)
        assert policy is not None, problems
        best = min(timeit.repeat(lambda p=policy: p.decide(who, "GET", "/api/a/b/x", lambda: address), number=n, repeat=5))
        print(f"{best / n * 1e6:6.2f} µs  {label}")


if __name__ == "__main__":
    main()
