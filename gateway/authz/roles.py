"""Roles on users: the rule for a role name and changing a user's set of roles on a `Store`.

A change is one store call that also bumps the user's roles version and logs it, so every instance
refuses the user's older access tokens within its poll interval and the next refresh carries the
new roles; nobody is logged out.

Must not: import aiohttp, or cut access itself (that is `grants.py`, fed from the store's log).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.core.errors import BadRequest, NoRoute
from gateway.core.log import audit
from gateway.store import Store, UserRecord

__all__ = ["ROLE_PATTERN", "change_roles", "check_role"]

ROLE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")


def check_role(name: object) -> str:
    """The role name if it matches `[a-z0-9][a-z0-9_.:-]{0,63}`; else BadRequest."""
    if not isinstance(name, str) or not ROLE_PATTERN.fullmatch(name):
        raise BadRequest(f"{name!r} is not a role name (1-64 of a-z 0-9 _ . : -, starting with a letter or digit)")
    return name


async def change_roles(
    store: Store, user: UserRecord, *, add: Iterable[str] = (), remove: Iterable[str] = (), now: float
) -> UserRecord:
    """Adds and removes roles (removal wins for a role named in both); returns the updated user."""
    added = {check_role(r) for r in add}
    removed = {check_role(r) for r in remove}
    wanted = tuple(sorted((set(user.roles) | added) - removed))
    updated = await store.set_user_roles(user.id, wanted, now=now)
    if updated is None:
        raise NoRoute(f"no user with email {user.email}")
    if updated.roles_version != user.roles_version:
        audit("roles_changed", user_id=user.id, roles=" ".join(updated.roles), version=updated.roles_version)
    return updated
