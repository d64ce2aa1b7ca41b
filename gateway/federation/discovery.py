"""One identity provider over HTTP: its discovery document, its signing keys, its token endpoint.

The discovery document and the JWKS are cached; both are fetched again when a call fails, and the
keys when a token names a `kid` they lack (key rotation), at most once per REFRESH_INTERVAL_S so
that forged tokens with random kids cannot make the gateway hammer the provider. Keys are also
re-read once their age passes KEYS_MAX_AGE_S, or the JWKS answer's `Cache-Control: max-age` if
shorter, so a key the provider withdrew stops being trusted; if that re-read fails, no key is.

Must not: log or return the provider's tokens or the client secret; follow redirects; wait on a
provider without a timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import jwt

from gateway.config import IdentityProviderConfig
from gateway.core.errors import IdpError
from gateway.core.log import auth_log

__all__ = ["KEYS_MAX_AGE_S", "REFRESH_INTERVAL_S", "ProviderClient"]

REFRESH_INTERVAL_S = 10.0
METADATA_TTL_S = 3600.0
KEYS_MAX_AGE_S = 24 * 3600.0


def _max_age(cache_control: str) -> float | None:
    """The `max-age` of a Cache-Control value (RFC 9111 §5.2.2.1), or None; `no-store`/`no-cache` are 0."""
    age: float | None = None
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age" and value.strip().strip('"').isdigit():
            age = float(value.strip().strip('"'))
    return age
_MAX_BODY = 512 * 1024


class ProviderClient:
    """Discovery, keys and code exchange for one configured provider; `clock` gives epoch seconds."""

    def __init__(
        self, cfg: IdentityProviderConfig, *, session: aiohttp.ClientSession, clock: Callable[[], float]
    ) -> None:
        self.cfg = cfg
        self._session = session
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout.total_seconds())
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at = float("-inf")  # the last fetch attempt: refreshes are rate-limited from it
        self._keys_until = float("-inf")  # the keys we hold are trusted until then
        self._lock = asyncio.Lock()

    @property
    def discovery_url(self) -> str:
        """`{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4)."""
        return self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def _get_json(self, url: str) -> dict[str, Any]:
        return (await self._get(url))[0]

    async def _get(self, url: str) -> tuple[dict[str, Any], str]:
        """The JSON object at `url` and the answer's Cache-Control value."""
        try:
            async with self._session.get(url, timeout=self._timeout, allow_redirects=False) as resp:
                body = await resp.content.read(_MAX_BODY + 1)
                if resp.status != 200:
                    raise IdpError(f"{self.cfg.name}: {url} answered {resp.status}")
                cache_control = ",".join(resp.headers.getall("Cache-Control", ()))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IdpError(f"{self.cfg.name}: cannot reach the provider ({type(exc).__name__})") from exc
        return _json_object(body, what=url), cache_control

    async def metadata(self, *, refresh: bool = False) -> dict[str, Any]:
        """The provider's discovery document, cached for METADATA_TTL_S; IdpError if it cannot be had."""
        if not refresh and self._metadata_fresh():
            assert self._metadata is not None
            return self._metadata
        async with self._lock:
            if not refresh and self._metadata_fresh():
                assert self._metadata is not None
                return self._metadata
            doc = await self._get_json(self.discovery_url)
            # Discovery §4.3: the document must name exactly the issuer it was fetched for (no mix-up).
            if doc.get("issuer") != self.cfg.issuer:
                raise IdpError(f"{self.cfg.name}: the discovery document names another issuer")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(key), str):
                    raise IdpError(f"{self.cfg.name}: the discovery document lacks {key}")
            self._metadata, self._metadata_at = doc, self._clock()
            return doc

    def _metadata_fresh(self) -> bool:
        return self._metadata is not None and self._clock() - self._metadata_at < METADATA_TTL_S

    def forget_metadata(self) -> None:
        """Drops the cached discovery document, so the next call fetches it anew (after a failure)."""
        self._metadata = None

    async def keys(self, *, refresh: bool = False) -> dict[str, jwt.PyJWK]:
        """The provider's published signing keys by kid; `refresh` fetches them again, rate-limited."""
        now = self._clock()
        if self._keys and now >= self._keys_until:
            # Too old to trust: a provider that withdrew a key (say, a leaked one) must not have it
            # honoured here until a restart. Until the re-read succeeds no key is trusted.
            self._keys = {}
        if self._keys and not refresh:
            return self._keys
        if self._keys and now - self._keys_at < REFRESH_INTERVAL_S:
            return self._keys
        self._keys_at = now
        meta = await self.metadata(refresh=refresh)
        data, cache_control = await self._get(meta["jwks_uri"])
        keys: dict[str, jwt.PyJWK] = {}
        for i, raw in enumerate(data.get("keys") or []):
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue  # a key type or algorithm we do not support is simply not usable
            keys[str(raw.get("kid") or f"#{i}")] = key
        if not keys:
            raise IdpError(f"{self.cfg.name}: the provider publishes no usable signing key")
        self._keys = keys
        max_age = _max_age(cache_control)
        ttl = KEYS_MAX_AGE_S if max_age is None else min(max(max_age, REFRESH_INTERVAL_S), KEYS_MAX_AGE_S)
        self._keys_until = now + ttl
        auth_log.info("idp_keys_loaded provider=%s kids=%s", self.cfg.name, ",".join(sorted(keys)))
        return keys

    async def exchange_code(self, *, code: str, redirect_uri: str, verifier: str) -> dict[str, Any]:
        """Redeems an authorization code at the token endpoint with client_secret_basic (RFC 6749 §2.3.1)."""
        meta = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        # §2.3.1: client id and secret are form-encoded before they go into the Basic credentials.
        auth = aiohttp.encode_basic_auth(quote_plus(self.cfg.client_id), quote_plus(self.cfg.client_secret))
        try:
            async with self._session.post(
                meta["token_endpoint"], data=form, timeout=self._timeout, allow_redirects=False,
                headers={"Accept": "application/json", "Authorization": auth},
            ) as resp:  # fmt: skip
                body = await resp.content.read(_MAX_BODY + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.forget_metadata()
            raise IdpError(f"{self.cfg.name}: cannot reach the token endpoint ({type(exc).__name__})") from exc
        if status != 200:
            error = ""
            try:
                error = str(_json_object(body, what="token endpoint").get("error", ""))[:64]
            except IdpError:
                pass
            raise IdpError(f"{self.cfg.name}: the provider refused the code ({status} {error})".rstrip())
        tokens = _json_object(body, what="token endpoint")
        if not isinstance(tokens.get("id_token"), str):
            raise IdpError(f"{self.cfg.name}: the token endpoint sent no id_token")
        return tokens


def _json_object(body: bytes, *, what: str) -> dict[str, Any]:
    if len(body) > _MAX_BODY:
        raise IdpError(f"the answer of {what} is too large")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IdpError(f"the answer of {what} is not JSON") from exc
    if not isinstance(data, dict):
        raise IdpError(f"the answer of {what} is not a JSON object")
    return data
