"""argon2id password hashing and verification (argon2-cffi) on a small executor of their own.

A login storm must not take the cores that proxying needs: password work runs on at most
`max(1, cpus - 1)` threads, and each hash uses one lane, so one thread.

Must not: import aiohttp; or let the time to check a password depend on whether the user exists
(the dummy hash checked for unknown emails has the same parameters as every stored hash).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["Passwords", "is_unusable", "unusable_hash"]

# 64 MiB and 3 passes as in RFC 9106's second recommendation, with one lane instead of four: lanes
# are computed on threads of their own, so four lanes let a few concurrent logins take every core
# from the event loop. A guess still costs an attacker 64 MiB x 3 passes; only our own wall time per
# hash grows. Every hash, the dummy included, has these parameters, so verification time does not
# tell an attacker whether an email exists.
_HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=1)

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def _executor() -> ThreadPoolExecutor:
    """This process's password threads, created on first use (and again in a forked child)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _pool = ThreadPoolExecutor(max_workers=max(1, cpus - 1), thread_name_prefix="gateway-argon2")
        _pool_pid = os.getpid()
    return _pool


# A stored hash that starts with this can never match (the PHC strings argon2 writes start with "$"):
# accounts created by an identity provider have no password until one is set.
_UNUSABLE = "!"


def unusable_hash() -> str:
    """A password hash no password matches (random, so no two such accounts share one)."""
    return _UNUSABLE + secrets.token_urlsafe(16)


def is_unusable(password_hash: str) -> bool:
    """Whether the hash is one from `unusable_hash`."""
    return password_hash.startswith(_UNUSABLE)


def _checked(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class Passwords:
    """Hashes new passwords and checks given ones against a stored hash (or the dummy)."""

    def __init__(self) -> None:
        # Checked instead when the email is unknown, so that answer takes as long as a wrong password.
        self._dummy_hash = _HASHER.hash(secrets.token_hex(16))

    async def hash(self, password: str) -> str:
        """A new argon2id hash of `password` in the standard PHC encoding."""
        return await asyncio.get_running_loop().run_in_executor(_executor(), _HASHER.hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether a stored hash was made with other parameters than today's (older, weaker ones)."""
        if is_unusable(password_hash):
            return False
        try:
            return _HASHER.check_needs_rehash(password_hash)
        except InvalidHashError:
            return False

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; with no hash (unknown user), checks the dummy and answers False."""
        # An unusable hash is checked like an unknown user's, so the answer and its time are those of
        # any wrong password and tell nobody that the account logs in through a provider.
        usable = password_hash is not None and not is_unusable(password_hash)
        target = password_hash if usable and password_hash is not None else self._dummy_hash
        ok = await asyncio.get_running_loop().run_in_executor(_executor(), _checked, target, password)
        return ok and usable
