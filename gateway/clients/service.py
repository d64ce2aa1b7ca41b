"""Machine clients (OAuth 2.0 client credentials, RFC 6749 4.4): adding, listing, removing, and issuing tokens.

A client secret is 256 random bits, shown once and stored as an HMAC-SHA256 hash: for input that
random a fast hash is as strong as argon2 and keeps every token request off the password threads.
Hashes are compared with `hmac.compare_digest`, and an unknown client id is checked against a dummy
hash, so the answer's timing does not tell which ids exist. Failed authentications are throttled per
client address and per client id like failed logins, through `FailureThrottle` (counted in the
store at `limits.login`, re-read on reload). Removing a client logs it in the store's grant-change
log, so every instance refuses its tokens within its poll interval.

Must not: import aiohttp, or hold a secret in plaintext anywhere but the one answer to `add`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.authz.grants import REMOVED
from gateway.config import Rate
from gateway.core.errors import BadRequest, InvalidClient, InvalidScope, NoRoute, RateLimited
from gateway.core.log import audit
from gateway.store import ClientRecord, Store
from gateway.tokens.keyring import KeyRing

__all__ = ["ClientService", "ClientToken", "FailureThrottle", "check_scope", "hash_client_secret"]

_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")  # RFC 6749 3.3 scope-token
_HASH_KEY = b"gateway machine-client secret v1"


def hash_client_secret(secret: str) -> str:
    """What the store keeps instead of the secret."""
    return hmac.new(_HASH_KEY, secret.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def check_scope(scope: str) -> str:
    """The scope if it is an RFC 6749 scope-token (printable ASCII, no space, quote or backslash)."""
    if not _SCOPE.fullmatch(scope):
        raise BadRequest(f"{scope!r} is not a scope (1-128 printable ASCII characters, no space, \" or \\)")
    return scope


class FailureThrottle:
    """Failed client authentications per client address and per client id, counted in the store as
    failed logins are, so every worker and instance shares the count."""

    def __init__(self, store: Store, rate: Rate) -> None:
        self._store = store
        self._rate = rate

    def set_rate(self, rate: Rate) -> None:
        """(Re)applies the rate on reload; the counts live in the store and carry over."""
        self._rate = rate

    @staticmethod
    def _keys(ip: str, client_id: str) -> tuple[str, str]:
        return (f"client:ip:{ip}", f"client:id:{client_id}")

    async def wait(self, *, ip: str, client_id: str, now: float) -> int:
        """0 to go on, else the seconds to wait; an allowed attempt is counted as failed until forgiven."""
        return await self._store.take_limit(self._keys(ip, client_id), rate=self._rate, now=now)

    async def forgive(self, *, ip: str, client_id: str, at: float) -> None:
        """Takes back the attempt counted by `wait`: it succeeded."""
        await self._store.give_back_limit(self._keys(ip, client_id), rate=self._rate)


@dataclass(frozen=True, slots=True)
class ClientToken:
    """An issued client access token (never a refresh token)."""

    access_token: str
    expires_in: int
    scope: str
    client_id: str


class ClientService:
    """The client rules on a `Store`; `clock` returns epoch seconds."""

    def __init__(self, *, store: Store, keys: KeyRing, throttle: FailureThrottle, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = keys
        self.throttle = throttle
        self.clock = clock
        self._dummy_hash = hash_client_secret(secrets.token_urlsafe(32))

    async def add(self, name: str, scopes: Iterable[str]) -> tuple[ClientRecord, str]:
        """A new client and its secret (the only time the secret exists outside the caller's hands)."""
        name = name.strip()
        if not 1 <= len(name) <= 128 or not name.isprintable():
            raise BadRequest("a client name is 1 to 128 printable characters")
        granted = tuple(sorted({check_scope(s) for s in scopes}))
        secret = secrets.token_urlsafe(32)
        record = ClientRecord(
            id="cl_" + secrets.token_hex(12), name=name, secret_hash=hash_client_secret(secret), scopes=granted, created_at=self.clock()
        )
        await self.store.create_client(record)
        audit("client_created", client_id=record.id, scopes=" ".join(granted))
        return record, secret

    async def list(self) -> list[ClientRecord]:
        """Every client, oldest first."""
        return await self.store.list_clients()

    async def remove(self, client_id: str) -> None:
        """Deletes the client; its tokens are refused on every instance once they poll. NoRoute if unknown."""
        if not await self.store.remove_client(client_id, now=self.clock(), version=REMOVED):
            raise NoRoute(f"no client {client_id}")
        audit("client_removed", client_id=client_id)

    async def issue(self, client_id: str, secret: str, *, scope: str | None, ip: str) -> ClientToken:
        """Authenticates the client and issues a token for `scope` (None or "": every scope it has)."""
        now = self.clock()
        wait = await self.throttle.wait(ip=ip, client_id=client_id, now=now)
        if wait:
            audit("client_auth_failure", client_id=client_id, ip=ip, reason="rate_limited")
            raise RateLimited("too many failed client authentications; try again later", retry_after=wait)
        client = await self.store.get_client(client_id) if 0 < len(client_id) <= 128 else None
        stored = client.secret_hash if client is not None else self._dummy_hash
        ok = hmac.compare_digest(stored, hash_client_secret(secret))
        if client is None or not ok:
            audit("client_auth_failure", client_id=client_id, ip=ip, reason="unknown_client" if client is None else "wrong_secret")
            raise InvalidClient("client authentication failed")
        await self.throttle.forgive(ip=ip, client_id=client_id, at=now)
        granted = client.scopes
        if scope:
            wanted = scope.split(" ")
            if any(not s for s in wanted):
                raise BadRequest("scope is a space-separated list of scope tokens")
            unknown = sorted(set(wanted) - set(client.scopes))
            if unknown:
                audit("client_token_refused", client_id=client_id, ip=ip, reason="invalid_scope")
                raise InvalidScope(f"this client was not given the scope {unknown[0]!r}")
            granted = tuple(sorted(set(wanted)))
        token, expires_in = self.keys.issue_client_token(client_id=client.id, scopes=granted, now=now)
        audit("client_token", client_id=client.id, ip=ip, scopes=" ".join(granted))
        return ClientToken(access_token=token, expires_in=expires_in, scope=" ".join(granted), client_id=client.id)
