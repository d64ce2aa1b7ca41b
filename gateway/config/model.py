"""The configuration's shape: frozen dataclasses, one per TOML table, with their defaults.

Must not: parse or validate anything (values.py and the table modules do), or import aiohttp.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from gateway.authz.rules import Policy

AuthMode = Literal["required", "optional", "public"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    """At most `count` events per `period_s` seconds."""

    count: int
    period_s: int

    def __str__(self) -> str:
        unit = {v: k for k, v in _RATE_UNITS.items()}[self.period_s]
        return f"{self.count}/{unit}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Where the gateway listens and which peers it believes."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_origin: str | None = None
    auth_prefix: str = "/auth"
    workers: int = 1
    trusted_proxies: tuple[IpNetwork, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_networks: tuple[IpNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    shutdown_timeout: timedelta = timedelta(seconds=30)
    hsts: str | None = None
    max_connections: int = 10_000
    header_timeout: timedelta = timedelta(seconds=10)
    revocation_poll: timedelta = timedelta(milliseconds=250)
    # Issue 10, header policy: client headers with `_` or `.` in their name ("drop" as nginx, or "pass").
    underscore_headers: str = "drop"
    # Chunked request bodies up to this many bytes are buffered and sent with Content-Length.
    buffer_request_body: int = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """The session store; `sqlite_path` is set for SQLite URLs, resolved against the config's folder."""

    url: str = field(default="sqlite:///gateway.db", repr=False)
    sqlite_path: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenConfig:
    """Signing keys and lifetimes; keys are oldest first, the last one signs."""

    algorithm: str = "HS256"
    secret: str = field(default="", repr=False)
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    private_key_file: Path | None = None
    previous_public_key_files: tuple[Path, ...] = ()
    refresh_secret: str = field(default="", repr=False)
    issuer: str = "gateway"
    audience: str = "api"
    access_ttl: timedelta = timedelta(minutes=15)
    refresh_ttl: timedelta = timedelta(days=30)
    session_ttl: timedelta = timedelta(hours=12)
    absolute_ttl: timedelta = timedelta(days=90)
    reuse_grace: timedelta = timedelta(seconds=10)
    leeway: timedelta = timedelta(seconds=30)
    access_delivery: Literal["body", "cookie", "both"] = "both"


@dataclass(frozen=True, slots=True, kw_only=True)
class CookieConfig:
    """Names and attributes of the gateway's two cookies."""

    access_name: str = "access_token"
    refresh_name: str = "refresh_token"
    secure: bool = True
    samesite: Literal["Strict", "Lax", "None"] = "Lax"
    domain: str | None = None

    @property
    def flow_name(self) -> str:
        """The federated-login flow cookie's name. With Secure and no Domain it takes the `__Host-`
        prefix, which browsers only accept from this origin itself with Path=/, so a sibling
        subdomain cannot plant its own flow (login CSRF); otherwise the prefix is not allowed."""
        return "__Host-oidc_flow" if self.secure and self.domain is None else "oidc_flow"


@dataclass(frozen=True, slots=True, kw_only=True)
class CsrfConfig:
    """Origins besides the gateway's own that may send cookie-authenticated unsafe requests."""

    trusted_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityHeadersConfig:
    """Header names the upstream receives; the same names are stripped from every client request."""

    user_id: str = "X-User-Id"
    email: str = "X-User-Email"
    session_id: str = "X-Session-Id"
    roles: str = "X-User-Roles"
    client_id: str = "X-Client-Id"
    scopes: str = "X-Token-Scopes"

    def names(self) -> tuple[str, ...]:
        """Every identity header name, as configured."""
        return (self.user_id, self.email, self.session_id, self.roles, self.client_id, self.scopes)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Rate limits on the `/auth` endpoints."""

    login: Rate = Rate(count=10, period_s=60)
    refresh: Rate = Rate(count=60, period_s=60)
    email: Rate = Rate(count=5, period_s=3600)  # mails per address and per client address


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Log level and format (`json` for machines, `text` for a terminal)."""

    level: str = "INFO"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class MfaConfig:
    """Second factors: the key that encrypts TOTP secrets at rest and the name authenticator apps show."""

    encryption_key: str = field(default="", repr=False)  # "": derived from the token signing key
    totp_issuer: str = "Gateway"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebAuthnConfig:
    """Passkeys: the relying party (default: the host of server.public_origin) and extra allowed origins."""

    rp_id: str | None = None
    rp_name: str = "Gateway"
    origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """One upstream mounted at a path prefix."""

    prefix: str
    upstream: str
    auth: AuthMode = "required"
    strip_prefix: bool = False
    timeout: timedelta = timedelta(seconds=30)
    forward_authorization: bool = False
    preserve_host: bool = False
    # Authorization: the route's allow/deny rules, compiled at load (None: any authenticated caller).
    policy: Policy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountsConfig:
    """Self-service accounts: sign-up, email verification, password reset (issue 12)."""

    signup: bool = False
    require_verified_email: bool = False
    verify_ttl: timedelta = timedelta(hours=24)
    reset_ttl: timedelta = timedelta(minutes=30)
    link_base: str | None = None  # None: server.public_origin, else http://host:port


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailConfig:
    """The SMTP relay the mail outbox delivers through; `smtp_url` may carry user:pass@ (masked when printed)."""

    smtp_url: str = field(default="smtp://127.0.0.1:1025", repr=False)
    sender: str = "Gateway <no-reply@example.com>"  # the TOML key is `from`


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityProviderConfig:
    """One OpenID Connect provider that users may log in with (`[[identity_providers]]`)."""

    name: str
    issuer: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    allowed_email_domains: tuple[str, ...] = ()
    roles_claim: str = ""
    create_users: bool = True
    timeout: timedelta = timedelta(seconds=10)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration; `source` is the file it came from (for messages)."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    tokens: TokenConfig = TokenConfig()
    cookies: CookieConfig = CookieConfig()
    csrf: CsrfConfig = CsrfConfig()
    identity_headers: IdentityHeadersConfig = IdentityHeadersConfig()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    routes: tuple[RouteConfig, ...] = ()
    accounts: AccountsConfig = AccountsConfig()
    email: EmailConfig = EmailConfig()
    source: str = ""
    identity_providers: tuple[IdentityProviderConfig, ...] = ()
    mfa: MfaConfig = MfaConfig()
    webauthn: WebAuthnConfig = WebAuthnConfig()


