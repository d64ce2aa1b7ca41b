"""The gateway's configuration: frozen dataclasses loaded from one TOML file, validated before startup.

Must not: import aiohttp, open sockets or files other than the config and the key files it names,
or log anything (a Config holds secrets).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.policy import Policy, compile_policy

__all__ = [
    "AccountsConfig",
    "AuthMode",
    "Config",
    "CookieConfig",
    "CsrfConfig",
    "EmailConfig",
    "IdentityHeadersConfig",
    "IdentityProviderConfig",
    "LimitsConfig",
    "LogConfig",
    "MfaConfig",
    "Rate",
    "RouteConfig",
    "ServerConfig",
    "StoreConfig",
    "TokenConfig",
    "WebAuthnConfig",
    "load_config",
    "masked",
    "parse_config",
    "parse_duration",
    "parse_size",
]

AuthMode = Literal["required", "optional", "public"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_COOKIE_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


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


def parse_duration(value: object) -> timedelta:
    """`"90s"`, `"15m"`, `"12h"`, `"30d"` or integer seconds >= 0; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like \"15m\" or integer seconds")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must be >= 0")
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"must be a duration like \"90s\", \"15m\", \"12h\", \"30d\" or integer seconds, not {value!r}")


_SIZE = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3}


def parse_size(value: object) -> int:
    """`"1MiB"`, `"512KiB"`, `"2MB"`, `"100B"` or integer bytes >= 0; raises ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must be >= 0")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise ValueError(f"must be a size like \"1MiB\", \"512KiB\", \"2MB\" or integer bytes, not {value!r}")


def _parse_rate(value: object) -> Rate:
    if isinstance(value, str):
        match = _RATE.match(value)
        if match and int(match.group(1)) > 0:
            return Rate(count=int(match.group(1)), period_s=_RATE_UNITS[match.group(2)])
    raise ValueError(f"must be a rate like \"10/minute\" (N >= 1 per second|minute|hour|day), not {value!r}")


T = TypeVar("T")


class _Table:
    """Reads one TOML table, recording problems under its path instead of raising."""

    def __init__(self, path: str, data: object, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(f"{path}: must be a table")
            data = {}
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: T, convert: Callable[[Any], T] | None = None) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        raw = self.data[name]
        try:
            if convert is not None:
                return convert(raw)
            if type(default) is bool and not isinstance(raw, bool):
                raise ValueError(f"must be true or false, not {raw!r}")
            if type(default) is int and (isinstance(raw, bool) or not isinstance(raw, int)):
                raise ValueError(f"must be an integer, not {raw!r}")
            if type(default) is str and not isinstance(raw, str):
                raise ValueError(f"must be a string, not {raw!r}")
            return raw  # type: ignore[no-any-return]
        except ValueError as exc:
            self.problems.append(f"{self.key(name)}: {exc}")
            return default

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.problems.append(f"{self.key(name)}: unknown key")


def _optional_str(raw: object) -> str | None:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {raw!r}")
    return raw


def _secret(raw: object) -> str:
    # Unlike the generic type check, the message must not echo the value: it is a (mistyped) secret.
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    return raw


def _str_list(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError("must be a list of strings")
    return tuple(raw)


def _networks(raw: object) -> tuple[IpNetwork, ...]:
    out = []
    for item in _str_list(raw):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR network") from None
    return tuple(out)


def _choice(*options: str) -> Callable[[object], Any]:
    def convert(raw: object) -> str:
        if raw not in options:
            raise ValueError(f"must be one of {' | '.join(options)}, not {raw!r}")
        return str(raw)

    return convert


def _origin(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {raw!r}")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"must be an origin like \"https://app.example.com\", not {raw!r}")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"must be an origin like \"https://app.example.com\", not {raw!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _prefix(raw: object) -> str:
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise ValueError("must start with \"/\"")
    if any(seg in (".", "..") for seg in raw.split("/")) or "//" in raw or "%" in raw or "\\" in raw:
        raise ValueError(f"must be a normalized path, not {raw!r}")
    stripped = raw.rstrip("/")
    return stripped or "/"


def _upstream(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a URL string")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, not {raw!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query, fragment or credentials")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ValueError(f"has an invalid port: {raw!r}") from None
    return raw.rstrip("/")


def _hsts(raw: object) -> str:
    if not isinstance(raw, str) or not re.fullmatch(r"max-age=\d+(; ?includeSubDomains)?(; ?preload)?", raw):
        raise ValueError(f"must be a Strict-Transport-Security value like \"max-age=63072000; includeSubDomains\", not {raw!r}")
    return raw


def _header_name(raw: object) -> str:
    if not isinstance(raw, str) or not _HEADER_NAME.match(raw):
        raise ValueError(f"must be an HTTP header name, not {raw!r}")
    return raw


def _cookie_name(raw: object) -> str:
    if not isinstance(raw, str) or not _COOKIE_NAME.match(raw):
        raise ValueError(f"must be a cookie name, not {raw!r}")
    return raw


def _substitute_env(data: object, path: str, problems: list[str], env: dict[str, str]) -> object:
    """Replaces every `${NAME}` in every string; an unset variable is a problem at that key."""
    if isinstance(data, dict):
        return {k: _substitute_env(v, f"{path}.{k}" if path else k, problems, env) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute_env(v, f"{path}[{i}]", problems, env) for i, v in enumerate(data)]
    if isinstance(data, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                problems.append(f"{path}: environment variable {name} is not set")
                return ""
            return env[name]

        return _ENV.sub(replace, data)
    return data


def _workers(raw: object) -> int:
    if raw == "auto":
        return os.cpu_count() or 1
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 64:
        raise ValueError(f"must be an integer from 1 to 64 or \"auto\", not {raw!r}")
    return raw


def _positive_int(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ValueError(f"must be an integer >= 1, not {raw!r}")
    return raw


def _port(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
        raise ValueError(f"must be a port number 0..65535, not {raw!r}")
    return raw


def _path(base: Path) -> Callable[[object], Path]:
    def convert(raw: object) -> Path:
        if not isinstance(raw, str) or not raw:
            raise ValueError("must be a file path")
        return (base / raw).resolve()

    return convert


def _store_url(base: Path, raw: object) -> tuple[str, Path | None]:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    if raw.startswith("sqlite:///"):
        rest = raw[len("sqlite:///") :]
        if not rest:
            raise ValueError("needs a file name, like \"sqlite:///gateway.db\"")
        # sqlite:////abs/path is absolute; sqlite:///rel.db is relative to the config file.
        return raw, (base / rest).resolve()
    if raw.startswith(("postgresql://", "postgres://")):
        if not _installed("asyncpg"):
            # Found here, not when the store opens: every command reports it as one config line.
            raise ValueError("PostgreSQL needs the asyncpg driver, which is not installed: pip install 'authgateway[postgres]'")
        return raw, None
    raise ValueError("must start with sqlite:/// or postgresql://")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _server(t: _Table, base: Path) -> ServerConfig:
    d = ServerConfig()
    cfg = ServerConfig(
        host=t.get("host", d.host),
        port=t.get("port", d.port, _port),
        public_origin=t.get("public_origin", d.public_origin, _origin),
        auth_prefix=t.get("auth_prefix", d.auth_prefix, _prefix),
        workers=t.get("workers", d.workers, _workers),
        trusted_proxies=t.get("trusted_proxies", d.trusted_proxies, _networks),
        tls_cert=t.get("tls_cert", d.tls_cert, _path(base)),
        tls_key=t.get("tls_key", d.tls_key, _path(base)),
        metrics_networks=t.get("metrics_networks", d.metrics_networks, _networks),
        shutdown_timeout=t.get("shutdown_timeout", d.shutdown_timeout, parse_duration),
        hsts=t.get("hsts", d.hsts, _hsts),
        max_connections=t.get("max_connections", d.max_connections, _positive_int),
        header_timeout=t.get("header_timeout", d.header_timeout, parse_duration),
        revocation_poll=d.revocation_poll,
        underscore_headers=t.get("underscore_headers", d.underscore_headers, _choice("drop", "pass")),
        buffer_request_body=t.get("buffer_request_body", d.buffer_request_body, parse_size),
    )
    if cfg.header_timeout <= timedelta(0):
        t.problems.append("server.header_timeout: must be greater than 0")
    if cfg.auth_prefix == "/":
        t.problems.append("server.auth_prefix: must not be \"/\"")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        t.problems.append("server.tls_cert: tls_cert and tls_key must be set together")
    for key in ("tls_cert", "tls_key"):
        p = getattr(cfg, key)
        if p is not None and not p.is_file():
            t.problems.append(f"server.{key}: file {p} does not exist")
    t.finish()
    return cfg


def _tokens(t: _Table, base: Path) -> TokenConfig:
    d = TokenConfig()
    cfg = TokenConfig(
        algorithm=t.get("algorithm", d.algorithm, _choice(*_ALGORITHMS)),
        secret=t.get("secret", d.secret, _secret),
        previous_secrets=t.get("previous_secrets", d.previous_secrets, _str_list),
        private_key_file=t.get("private_key_file", d.private_key_file, _path(base)),
        previous_public_key_files=t.get(
            "previous_public_key_files", d.previous_public_key_files, lambda raw: tuple(map(_path(base), _str_list(raw)))
        ),
        refresh_secret=t.get("refresh_secret", d.refresh_secret, _secret),
        issuer=t.get("issuer", d.issuer),
        audience=t.get("audience", d.audience),
        access_ttl=t.get("access_ttl", d.access_ttl, parse_duration),
        refresh_ttl=t.get("refresh_ttl", d.refresh_ttl, parse_duration),
        session_ttl=t.get("session_ttl", d.session_ttl, parse_duration),
        absolute_ttl=t.get("absolute_ttl", d.absolute_ttl, parse_duration),
        reuse_grace=t.get("reuse_grace", d.reuse_grace, parse_duration),
        leeway=t.get("leeway", d.leeway, parse_duration),
        access_delivery=t.get("access_delivery", d.access_delivery, _choice("body", "cookie", "both")),
    )
    p = t.problems
    if cfg.algorithm == "HS256":
        if len(cfg.secret.encode()) < 32:
            p.append("tokens.secret: must be at least 32 bytes for HS256")
        if cfg.private_key_file is not None:
            p.append("tokens.private_key_file: only for RS256, ES256 and EdDSA")
        p.extend(
            f"tokens.previous_secrets[{i}]: must be at least 32 bytes"
            for i, s in enumerate(cfg.previous_secrets)
            if len(s.encode()) < 32
        )
    else:
        if cfg.private_key_file is None:
            p.append(f"tokens.private_key_file: required for {cfg.algorithm}")
        elif not cfg.private_key_file.is_file():
            p.append(f"tokens.private_key_file: file {cfg.private_key_file} does not exist")
        if cfg.secret:
            p.append("tokens.secret: only for HS256; asymmetric algorithms use private_key_file")
    for i, f in enumerate(cfg.previous_public_key_files):
        if not f.is_file():
            p.append(f"tokens.previous_public_key_files[{i}]: file {f} does not exist")
    if cfg.refresh_secret and len(cfg.refresh_secret.encode()) < 32:
        p.append("tokens.refresh_secret: must be at least 32 bytes")
    for key in ("access_ttl", "refresh_ttl", "session_ttl", "absolute_ttl"):
        if getattr(cfg, key) <= timedelta(0):
            p.append(f"tokens.{key}: must be greater than 0")
    if not cfg.issuer:
        p.append("tokens.issuer: must not be empty")
    if not cfg.audience:
        p.append("tokens.audience: must not be empty")
    t.finish()
    return cfg


def _cookies(t: _Table) -> CookieConfig:
    d = CookieConfig()
    cfg = CookieConfig(
        access_name=t.get("access_name", d.access_name, _cookie_name),
        refresh_name=t.get("refresh_name", d.refresh_name, _cookie_name),
        secure=t.get("secure", d.secure),
        samesite=t.get("samesite", d.samesite, _choice("Strict", "Lax", "None")),
        domain=t.get("domain", d.domain, _optional_str),
    )
    if cfg.samesite == "None" and not cfg.secure:
        t.problems.append("cookies.samesite: \"None\" requires cookies.secure = true")
    if cfg.access_name == cfg.refresh_name:
        t.problems.append("cookies.refresh_name: must differ from cookies.access_name")
    t.finish()
    return cfg


def _route_policy(t: _Table, i: int) -> Policy | None:
    """`allow`/`deny` of routes[i], compiled; public routes may not carry them."""
    allow, deny = t.get("allow", None, lambda r: r), t.get("deny", None, lambda r: r)
    if (allow is not None or deny is not None) and t.data.get("auth") == "public":
        t.problems.append(f"routes[{i}].{'allow' if allow is not None else 'deny'}: a public route cannot carry a policy")
        return None
    return compile_policy(allow, deny, where=f"routes[{i}]", problems=t.problems)


def _routes(raw: object, problems: list[str], base: Path) -> tuple[RouteConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append("routes: must be an array of tables ([[routes]])")
        return ()
    routes: list[RouteConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = _Table(f"routes[{i}]", item, problems)
        before = len(problems)
        if "prefix" not in t.data:
            problems.append(f"routes[{i}].prefix: is required")
        if "upstream" not in t.data:
            problems.append(f"routes[{i}].upstream: is required")
        route = RouteConfig(
            prefix=t.get("prefix", "/", _prefix),
            upstream=t.get("upstream", "http://invalid", _upstream),
            auth=t.get("auth", "required", _choice("required", "optional", "public")),
            strip_prefix=t.get("strip_prefix", False),
            timeout=t.get("timeout", timedelta(seconds=30), parse_duration),
            forward_authorization=t.get("forward_authorization", False),
            preserve_host=t.get("preserve_host", False),
            policy=_route_policy(t, i),
        )
        t.finish()
        if route.timeout <= timedelta(0) and "timeout" in t.data:
            problems.append(f"routes[{i}].timeout: must be greater than 0")
        if len(problems) == before:
            if route.prefix in seen:
                problems.append(f"routes[{i}].prefix: duplicates routes[{seen[route.prefix]}].prefix {route.prefix!r}")
            seen[route.prefix] = i
            routes.append(route)
    return tuple(routes)


# -- federated login ([[identity_providers]]) ---------------------------------------------------
_IDP_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _issuer(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a URL string")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise ValueError(f"must be an https:// URL without query or fragment, not {raw!r}")
    # OpenID Discovery requires https; plain http only for a provider on this machine (tests, development).
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        raise ValueError(f"must be https:// (http:// only for a loopback provider), not {raw!r}")
    return raw


def _identity_providers(raw: object, problems: list[str]) -> tuple[IdentityProviderConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append("identity_providers: must be an array of tables ([[identity_providers]])")
        return ()
    out: list[IdentityProviderConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = f"identity_providers[{i}]"
        t = _Table(path, item, problems)
        for key in ("name", "issuer", "client_id", "client_secret"):
            if key not in t.data:
                problems.append(f"{path}.{key}: is required")
        idp = IdentityProviderConfig(
            name=t.get("name", ""),
            issuer=t.get("issuer", "", _issuer),
            client_id=t.get("client_id", ""),
            client_secret=t.get("client_secret", "", _secret),
            scopes=t.get("scopes", ("openid", "email", "profile"), _str_list),
            allowed_email_domains=t.get(
                "allowed_email_domains", (), lambda r: tuple(d.strip().lower().lstrip("@") for d in _str_list(r))
            ),
            roles_claim=t.get("roles_claim", ""),
            create_users=t.get("create_users", True),
            timeout=t.get("timeout", timedelta(seconds=10), parse_duration),
        )
        t.finish()
        if "name" in t.data and not _IDP_NAME.match(idp.name):
            problems.append(f"{path}.name: must be 1 to 64 of [a-z0-9-] (it is used in URLs), not {idp.name!r}")
        elif idp.name in seen:
            problems.append(f"{path}.name: duplicates identity_providers[{seen[idp.name]}].name {idp.name!r}")
        seen.setdefault(idp.name, i)
        if "client_id" in t.data and not idp.client_id:
            problems.append(f"{path}.client_id: must not be empty")
        if "client_secret" in t.data and not idp.client_secret:
            problems.append(f"{path}.client_secret: must not be empty")
        if "openid" not in idp.scopes:
            problems.append(f"{path}.scopes: must include \"openid\"")
        if any(not d or "@" in d or " " in d for d in idp.allowed_email_domains):
            problems.append(f"{path}.allowed_email_domains: each entry must be a domain like \"example.com\"")
        if idp.roles_claim and (idp.roles_claim != idp.roles_claim.strip() or " " in idp.roles_claim):
            problems.append(f"{path}.roles_claim: must be a claim name like \"groups\", not {idp.roles_claim!r}")
        if idp.timeout <= timedelta(0):
            problems.append(f"{path}.timeout: must be greater than 0")
        out.append(idp)
    return tuple(out)


# Issue 10: the keys only signing needs; commands that never sign (`users list`, ...) skip their checks.
_SIGNING_KEYS = ("tokens.secret", "tokens.previous_secrets", "tokens.refresh_secret", "tokens.private_key_file",
                 "tokens.previous_public_key_files")  # fmt: skip


def _causes_only(problems: list[str], env_problems: int, *, signing: bool) -> list[str]:
    """Drops problems derived from an unset variable (its key already names the cause), and with
    `signing=False` every problem of the signing keys."""
    unset = {p.partition(":")[0] for p in problems[:env_problems]}
    kept = problems[:env_problems] + [p for p in problems[env_problems:] if p.partition(":")[0] not in unset]
    return kept if signing else [p for p in kept if not p.startswith(_SIGNING_KEYS)]


def parse_config(
    data: dict[str, Any], *, base: Path, source: str = "", env: dict[str, str] | None = None, signing: bool = True
) -> Config:
    """Validates a parsed TOML document; raises one ConfigError listing every problem. `signing=False`
    is for commands that never sign a token: the signing keys may then be absent."""
    problems: list[str] = []
    data = _substitute_env(data, "", problems, dict(os.environ) if env is None else env)  # type: ignore[assignment]
    env_problems = len(problems)
    root = _Table("", data, problems)
    server = _server(_Table("server", root.get("server", None, lambda r: r), problems), base)
    store_t = _Table("store", root.get("store", None, lambda r: r), problems)
    url = store_t.get("url", StoreConfig().url)
    try:
        url, sqlite_path = _store_url(base, url)
    except ValueError as exc:
        problems.append(f"store.url: {exc}")
        sqlite_path = None
    store_t.finish()
    tokens = _tokens(_Table("tokens", root.get("tokens", None, lambda r: r), problems), base)
    cookies = _cookies(_Table("cookies", root.get("cookies", None, lambda r: r), problems))
    csrf_t = _Table("csrf", root.get("csrf", None, lambda r: r), problems)
    csrf = CsrfConfig(trusted_origins=csrf_t.get("trusted_origins", (), lambda r: tuple(map(_origin, _str_list(r)))))
    csrf_t.finish()
    ih_t = _Table("identity_headers", root.get("identity_headers", None, lambda r: r), problems)
    dih = IdentityHeadersConfig()
    identity = IdentityHeadersConfig(
        user_id=ih_t.get("user_id", dih.user_id, _header_name),
        email=ih_t.get("email", dih.email, _header_name),
        session_id=ih_t.get("session_id", dih.session_id, _header_name),
        roles=ih_t.get("roles", dih.roles, _header_name),
        client_id=ih_t.get("client_id", dih.client_id, _header_name),
        scopes=ih_t.get("scopes", dih.scopes, _header_name),
    )
    ih_t.finish()
    if len({name.lower() for name in identity.names()}) != len(identity.names()):
        problems.append("identity_headers: the header names must differ")
    lim_t = _Table("limits", root.get("limits", None, lambda r: r), problems)
    dl = LimitsConfig()
    limits = LimitsConfig(
        login=lim_t.get("login", dl.login, _parse_rate),
        refresh=lim_t.get("refresh", dl.refresh, _parse_rate),
        email=lim_t.get("email", dl.email, _parse_rate),
    )
    lim_t.finish()
    log_t = _Table("log", root.get("log", None, lambda r: r), problems)
    dlog = LogConfig()
    log = LogConfig(
        level=log_t.get("level", dlog.level, _choice("DEBUG", "INFO", "WARNING", "ERROR")),
        format=log_t.get("format", dlog.format, _choice("json", "text")),
        access_log=log_t.get("access_log", dlog.access_log),
    )
    log_t.finish()
    routes = _routes(root.get("routes", None, lambda r: r), problems, base)
    accounts = _accounts(_Table("accounts", root.get("accounts", None, lambda r: r), problems))
    email = _email(_Table("email", root.get("email", None, lambda r: r), problems))
    identity_providers = _identity_providers(root.get("identity_providers", None, lambda r: r), problems)
    mfa, webauthn = _second_factors(root, problems)
    root.finish()
    for i, route in enumerate(routes):
        if route.prefix == server.auth_prefix or route.prefix.startswith(server.auth_prefix + "/"):
            problems.append(f"routes[{i}].prefix: {route.prefix!r} lies under server.auth_prefix and would never be reached")
    problems = _causes_only(problems, env_problems, signing=signing)
    if problems:
        raise ConfigError(problems, source=source)
    return Config(
        server=server,
        store=StoreConfig(url=url, sqlite_path=sqlite_path),
        tokens=tokens,
        cookies=cookies,
        csrf=csrf,
        identity_headers=identity,
        limits=limits,
        log=log,
        routes=routes,
        accounts=accounts,
        email=email,
        source=source,
        identity_providers=identity_providers,
        mfa=mfa,
        webauthn=webauthn,
    )


# -- accounts and mail (issue 12) -------------------------------------------------------------------


def _link_base(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {raw!r}")
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"must be an http(s) URL like \"https://app.example.com\", not {raw!r}")
    return raw.strip().rstrip("/")


def _smtp_url(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {raw!r}")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("must be smtp://[user:pass@]host[:port] or smtps://[user:pass@]host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or port == 0:
        raise ValueError("must name only the scheme, credentials, host and port")
    return raw


def _mail_from(raw: object) -> str:
    from email.headerregistry import Address
    from email.utils import parseaddr

    if not isinstance(raw, str) or any(c in raw for c in "\r\n\0"):
        raise ValueError(f"must be one line like \"Gateway <no-reply@example.com>\", not {raw!r}")
    name, addr = parseaddr(raw)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"must be an address like \"Gateway <no-reply@example.com>\", not {raw!r}")
    try:
        Address(display_name=name, username=local, domain=domain)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"is not a valid address ({exc})") from None
    return raw


def _positive_duration(raw: object) -> timedelta:
    value = parse_duration(raw)
    if value <= timedelta(0):
        raise ValueError("must be greater than 0")
    return value


def _accounts(t: _Table) -> AccountsConfig:
    d = AccountsConfig()
    cfg = AccountsConfig(
        signup=t.get("signup", d.signup),
        require_verified_email=t.get("require_verified_email", d.require_verified_email),
        verify_ttl=t.get("verify_ttl", d.verify_ttl, _positive_duration),
        reset_ttl=t.get("reset_ttl", d.reset_ttl, _positive_duration),
        link_base=t.get("link_base", d.link_base, _link_base),
    )
    t.finish()
    return cfg


def _email(t: _Table) -> EmailConfig:
    d = EmailConfig()
    cfg = EmailConfig(smtp_url=t.get("smtp_url", d.smtp_url, _smtp_url), sender=t.get("from", d.sender, _mail_from))
    t.finish()
    return cfg


_RP_ID = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _rp_id(raw: object) -> str:
    if not isinstance(raw, str) or not _RP_ID.match(raw):
        raise ValueError(f"must be a domain name like \"example.com\" (no scheme, port or path), not {raw!r}")
    return raw


def _second_factors(root: _Table, problems: list[str]) -> tuple[MfaConfig, WebAuthnConfig]:
    """`[mfa]` and `[webauthn]`."""
    mfa_t = _Table("mfa", root.get("mfa", None, lambda r: r), problems)
    dm = MfaConfig()
    mfa = MfaConfig(
        encryption_key=mfa_t.get("encryption_key", dm.encryption_key, _secret),
        totp_issuer=mfa_t.get("totp_issuer", dm.totp_issuer),
    )
    if mfa.encryption_key and len(mfa.encryption_key.encode()) < 32:
        problems.append("mfa.encryption_key: must be at least 32 bytes")
    if not mfa.totp_issuer or ":" in mfa.totp_issuer:
        problems.append("mfa.totp_issuer: must be a non-empty name without \":\"")
    mfa_t.finish()
    wa_t = _Table("webauthn", root.get("webauthn", None, lambda r: r), problems)
    dw = WebAuthnConfig()
    webauthn = WebAuthnConfig(
        rp_id=wa_t.get("rp_id", dw.rp_id, _rp_id),
        rp_name=wa_t.get("rp_name", dw.rp_name),
        origins=wa_t.get("origins", dw.origins, lambda r: tuple(map(_origin, _str_list(r)))),
    )
    if not webauthn.rp_name:
        problems.append("webauthn.rp_name: must not be empty")
    wa_t.finish()
    return mfa, webauthn


def load_config(path: str | os.PathLike[str], *, signing: bool = True) -> Config:
    """Reads and validates a TOML file; every failure is a ConfigError naming the file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read file: {exc.strerror}"], source=str(p)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source=str(p)) from None
    return parse_config(data, base=p.resolve().parent, source=str(p), signing=signing)


_SECRET_FIELDS = {"secret", "previous_secrets", "refresh_secret", "client_secret", "encryption_key"}
# libpq also takes the password as a URL query parameter (`?password=...`).
_URL_SECRET_PARAM = re.compile(r"(?i)([?&]password=)[^&#]*")


def _mask_secret(value: object) -> object:
    # A list of secrets keeps its length (how many keys verify is worth seeing), never the values.
    if isinstance(value, tuple):
        return ["***" if v else "" for v in value]
    return "***" if value else ""


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        # Replace the whole netloc (it comes first), not the password text, which may also be the host or path.
        user, _, host = parts.netloc.rpartition("@")
        url = url.replace(parts.netloc, f"{user.partition(':')[0]}:***@{host}", 1)
    return _URL_SECRET_PARAM.sub(r"\1***", url)


def _format_duration(value: timedelta) -> str:
    # The largest exact unit, so the printed config reads (and parses) like the TOML it came from.
    seconds = value.total_seconds()
    if seconds.is_integer():
        for unit in ("d", "h", "m"):
            if seconds and seconds % _UNITS[unit] == 0:
                return f"{int(seconds) // _UNITS[unit]}{unit}"
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


def masked(cfg: object) -> object:
    """A plain-data view of a config for printing, with secrets and store credentials masked."""
    # Rate is a dataclass too, and must print as the "10/minute" the TOML used.
    if isinstance(cfg, Rate):
        return str(cfg)
    if is_dataclass(cfg) and not isinstance(cfg, type):
        out: dict[str, object] = {}
        for f in fields(cfg):
            value = getattr(cfg, f.name)
            if f.name in _SECRET_FIELDS:
                out[f.name] = _mask_secret(value)
            elif f.name in ("url", "smtp_url") and isinstance(value, str):
                out[f.name] = _mask_url(value)
            elif isinstance(cfg, EmailConfig) and f.name == "sender":
                out["from"] = value  # printed under its TOML key
            else:
                out[f.name] = masked(value)
        return out
    if isinstance(cfg, tuple):
        return [masked(v) for v in cfg]
    if isinstance(cfg, timedelta):
        return _format_duration(cfg)
    if isinstance(cfg, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(cfg)
    return cfg
