"""Federated login rules: start a provider login, finish it as one of our sessions, end sessions on
a provider's back-channel logout. Which local user a provider identity is, and when one is created.

Must not: import aiohttp (providers are reached through `ProviderPort`), render HTTP, or keep a
provider's access, refresh or id token anywhere: only its `sub` and `sid` are stored.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from gateway.authz.roles import ROLE_PATTERN
from gateway.config import Config, IdentityProviderConfig
from gateway.core.errors import (
    AccountNotFound,
    BadRequest,
    Conflict,
    DomainNotAllowed,
    EmailNotVerified,
    IdpError,
    InvalidState,
    NoRoute,
)
from gateway.core.log import audit
from gateway.federation.flow import (
    FLOW_TTL_S,
    LOGOUT_JTI_KEEP_S,
    FlowSealer,
    FlowState,
    authorization_url,
    check_state,
    new_flow,
    safe_return_to,
    verify_id_token,
    verify_logout_token,
)
from gateway.sessions.passwords import unusable_hash
from gateway.sessions.service import Issued, SessionService, normalize_email
from gateway.store import ChallengeRecord, UserRecord

__all__ = ["FederationService", "LoginStart", "ProviderPort"]


def _domain(email: str) -> str | None:
    """The domain of the one address `email` is (parsed as at every other door), or None."""
    try:
        shown, _ = normalize_email(email)
    except BadRequest:
        return None
    return shown.rpartition("@")[2].casefold()


class ProviderPort(Protocol):
    """What the rules need of a provider (implemented over HTTP by `discovery.ProviderClient`)."""

    cfg: IdentityProviderConfig

    async def metadata(self, *, refresh: bool = False) -> dict[str, Any]: ...

    async def keys(self, *, refresh: bool = False) -> dict[str, jwt.PyJWK]: ...

    async def exchange_code(self, *, code: str, redirect_uri: str, verifier: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class LoginStart:
    """Where to send the browser, and the sealed flow cookie to give it."""

    location: str
    cookie: str


class FederationService:
    """The federated-login rules for every configured provider; `clock` gives epoch seconds."""

    def __init__(
        self,
        *,
        config: Config,
        providers: Mapping[str, ProviderPort],
        sessions: SessionService,
        flow_key: bytes,
        clock: Callable[[], float],
    ) -> None:
        self.providers = dict(providers)
        self.sessions = sessions
        self.store = sessions.store
        self.clock = clock
        self.leeway = config.tokens.leeway.total_seconds()
        self._sealer = FlowSealer(flow_key)

    def provider(self, name: str) -> ProviderPort:
        """The configured provider called `name`; NoRoute if there is none."""
        found = self.providers.get(name)
        if found is None:
            raise NoRoute(f"no identity provider named {name!r}")
        return found

    async def begin_login(self, name: str, *, return_to: object, redirect_uri: str) -> LoginStart:
        """A fresh flow for provider `name`: the authorization URL and the cookie that binds it to the browser."""
        provider = self.provider(name)
        meta = await provider.metadata()
        flow = new_flow(provider=name, return_to=safe_return_to(return_to), redirect_uri=redirect_uri)
        location = authorization_url(
            meta["authorization_endpoint"], client_id=provider.cfg.client_id, scopes=provider.cfg.scopes, flow=flow
        )
        return LoginStart(location=location, cookie=self._sealer.seal(flow, now=self.clock()))

    async def finish_login(
        self, name: str, *, params: Mapping[str, str], cookie: str | None, user_agent: str, ip: str
    ) -> tuple[Issued, str]:
        """Checks the callback against the browser's flow, redeems the code, and opens our session.

        Returns the session and the path to send the browser to.
        """
        provider = self.provider(name)
        if not cookie:
            raise InvalidState("no login flow cookie came with the callback; start the login again")
        now = self.clock()
        flow = self._sealer.open(cookie, now=now)
        check_state(flow, params.get("state"), provider=name)
        await self._check_iss_param(provider, params.get("iss"))
        # Each flow completes once, across every worker and instance: the record is in the store.
        if not await self._claim("oidc_flow", flow.id, until=now + FLOW_TTL_S, now=now):
            raise InvalidState("this login callback was already used")
        if "error" in params:
            raise IdpError(f"{name}: the provider answered {params['error'][:64]!r}")
        code = params.get("code")
        if not code:
            raise BadRequest("the callback carries no code")
        tokens = await provider.exchange_code(code=code, redirect_uri=flow.redirect_uri, verifier=flow.verifier)
        claims = await self._verified(provider, tokens["id_token"], flow)
        user = await self._local_user(provider.cfg, claims)
        issued = await self.sessions.start_session(
            user, remember_me=False, user_agent=user_agent, ip=ip, amr=("fed",), idp=name
        )
        sid = claims.get("sid")
        await self.store.record_federated_session(
            session_id=issued.session.id, provider=name, subject=claims["sub"], sid=sid if isinstance(sid, str) else ""
        )
        audit("federated_login", user_id=user.id, session_id=issued.session.id, ip=ip, reason=name)
        return issued, flow.return_to

    async def _claim(self, kind: str, value: str, *, until: float, now: float) -> bool:
        """Records `value` as used until `until`; False when it already was (a replay)."""
        key = hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()
        record = ChallengeRecord(key_hash=key, kind=kind, user_id=None, payload="", expires_at=until)
        return await self.store.challenge_claim(record, now=now)

    async def _check_iss_param(self, provider: ProviderPort, iss: str | None) -> None:
        # RFC 9207 §2.4: an `iss` that names another issuer is a mix-up attack; a provider that says it
        # always sends one and did not is refused too.
        if iss is not None:
            if iss != provider.cfg.issuer:
                raise InvalidState("the callback's iss names another issuer")
            return
        meta = await provider.metadata()
        if meta.get("authorization_response_iss_parameter_supported") is True:
            raise InvalidState("the provider always sends iss with its answer, and this callback has none")

    async def _verified(self, provider: ProviderPort, id_token: str, flow: FlowState) -> dict[str, Any]:
        cfg = provider.cfg
        for refresh in (False, True):
            keys = await provider.keys(refresh=refresh)
            try:
                return verify_id_token(
                    id_token, keys, issuer=cfg.issuer, client_id=cfg.client_id, nonce=flow.nonce, now=self.clock(),
                    leeway=self.leeway,
                )  # fmt: skip
            except KeyError:
                continue  # an unknown kid: the provider may have rotated its keys, so fetch them once more
        raise IdpError(f"{cfg.name}: the id_token was signed with a key the provider does not publish")

    async def _local_user(self, cfg: IdentityProviderConfig, claims: Mapping[str, Any]) -> UserRecord:
        """The user linked to (provider, sub); a first login links by verified address or creates one."""
        subject = claims["sub"]
        email, verified = claims.get("email"), claims.get("email_verified") is True
        if cfg.allowed_email_domains:
            # Checked at every login, and only on an address the provider vouches for: an unverified
            # address in an allowed domain is anyone's to claim.
            if not isinstance(email, str) or not verified:
                raise EmailNotVerified("this provider must vouch for an address in an allowed domain")
            if _domain(email) not in cfg.allowed_email_domains:
                raise DomainNotAllowed("the address is not in a domain this provider may log in")
        user_id = await self.store.find_identity(provider=cfg.name, subject=subject)
        if user_id is None:
            user = await self._first_login(cfg, subject, email, verified)
        else:
            found = await self.store.get_user(user_id=user_id)
            if found is None:
                raise AccountNotFound("the linked account no longer exists")
            user = found
            if not await self.store.is_email_verified(user.id):
                # Linked before takeovers existed (links were only ever made on a verified address):
                # whoever signed up under it first still holds a password and factors; strip them now.
                user = await self._take_over(cfg, user, now=self.clock())
        if user.disabled:
            raise AccountNotFound("this account is disabled")
        if cfg.roles_claim:
            user = await self._sync_roles(cfg, user, claims.get(cfg.roles_claim))
        return user

    async def _sync_roles(self, cfg: IdentityProviderConfig, user: UserRecord, groups: object) -> UserRecord:
        """The provider's groups become the user's roles (an absent claim: none). Values that are not
        role names are left out and counted, never guessed at."""
        values = groups if isinstance(groups, list) else [groups] if isinstance(groups, str) else []
        names = [v.strip().lower() if isinstance(v, str) else "" for v in values]
        roles = {n for n in names if ROLE_PATTERN.fullmatch(n)}
        skipped = sum(1 for n in names if not ROLE_PATTERN.fullmatch(n))
        updated = await self.store.set_user_roles(user.id, tuple(sorted(roles)), now=self.clock())
        if updated is None:
            raise AccountNotFound("the linked account no longer exists")
        if updated.roles_version != user.roles_version or skipped:
            roles_text = " ".join(updated.roles)
            audit("roles_from_provider", user_id=user.id, reason=cfg.name, roles=roles_text, skipped=skipped)
        return updated

    async def _first_login(
        self, cfg: IdentityProviderConfig, subject: str, email: object, verified: bool
    ) -> UserRecord:
        if not isinstance(email, str) or not email:
            raise EmailNotVerified("the provider sent no email address for this account")
        if not verified:
            # Linking, or creating an account under an address, on the provider's word that is not a
            # verification would let anyone who can type an address at the provider take that account.
            raise EmailNotVerified("the provider has not verified this address")
        try:
            shown, key = normalize_email(email)
        except BadRequest as exc:
            raise EmailNotVerified("the provider's address is not a usable email") from exc
        now = self.clock()
        user = await self.store.get_user(email_key=key)
        if user is not None and not await self.store.is_email_verified(user.id):
            user = await self._take_over(cfg, user, now=now)
        if user is None:
            if not cfg.create_users:
                raise AccountNotFound("there is no account for this address, and this provider may not create one")
            try:
                user = await self.store.create_user(
                    user_id=str(uuid.uuid4()), email=shown, email_key=key, password_hash=unusable_hash(), now=now
                )
                audit("user_created", user_id=user.id, reason=cfg.name)
            except Conflict:
                user = await self.store.get_user(email_key=key)  # a concurrent first login created it
                if user is None:
                    raise
        try:
            await self.store.link_identity(provider=cfg.name, subject=subject, user_id=user.id, now=now)
        except Conflict:
            pass  # a concurrent first login of the same identity linked it already
        linked = await self.store.find_identity(provider=cfg.name, subject=subject)
        if linked != user.id:
            raise AccountNotFound("this identity is linked to another account")
        audit("identity_linked", user_id=user.id, reason=cfg.name)
        return user

    async def _take_over(self, cfg: IdentityProviderConfig, user: UserRecord, *, now: float) -> UserRecord:
        """The provider proved the address; whoever made this account under it never did (sign-up
        without verifying). Linking to it as it is would hand the owner's login to that person, so
        the account is stripped first: no password, no second factor, no session, no pending token."""
        revoked = await self.store.take_over_unverified(user.id, password_hash=unusable_hash(), now=now)
        if revoked is not None:
            audit("account_taken_over", user_id=user.id, reason=cfg.name, count=len(revoked))
            self.sessions._revoked(revoked, user_id=user.id, reason="account_taken_over")
        # None: verified meanwhile by its own mail, so it is the owner's and linking to it is right.
        found = await self.store.get_user(user_id=user.id)
        if found is None:
            raise AccountNotFound("the account for this address no longer exists")
        return found

    async def backchannel_logout(self, name: str, logout_token: object) -> list[str]:
        """Verifies a logout token and revokes the sessions that provider login started; returns their ids."""
        provider = self.provider(name)
        if not isinstance(logout_token, str) or not logout_token:
            raise BadRequest("logout_token is required")
        cfg = provider.cfg
        claims = None
        for refresh in (False, True):
            try:
                keys = await provider.keys(refresh=refresh)
            except IdpError as exc:
                raise BadRequest(f"the logout token cannot be checked: {exc.description}") from exc
            try:
                claims = verify_logout_token(
                    logout_token, keys, issuer=cfg.issuer, client_id=cfg.client_id, now=self.clock(), leeway=self.leeway
                )
                break
            except KeyError:
                continue
        if claims is None:
            raise BadRequest("the logout token was signed with a key the provider does not publish")
        # Accepted once, across every worker: a replayed token could otherwise end sessions begun
        # since (with the same sub), long after the provider meant it to.
        until = max(claims.exp or 0.0, claims.iat + LOGOUT_JTI_KEEP_S) + self.leeway
        if not await self._claim(f"logout_jti:{name}", claims.jti, until=until, now=self.clock()):
            raise BadRequest("this logout token was already used")
        # Only sessions that began before the token was issued. `iat` has whole seconds, so "before"
        # reaches to the end of its second: a session begun at N.4 and logged out at N.9 (iat N) is ended.
        ids = await self.store.federated_sessions(
            provider=name, subject=claims.sub, sid=claims.sid, created_before=claims.iat + 1 + self.leeway, now=self.clock()
        )
        revoked: list[str] = []
        for session_id in ids:
            revoked += await self.sessions.revoke_session(session_id, reason="backchannel_logout")
        audit("backchannel_logout", reason=name, jti=claims.jti, count=len(revoked))
        return revoked
