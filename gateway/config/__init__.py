"""The gateway's configuration: frozen dataclasses loaded from one TOML file, validated before startup.

The package's face: `load_config` and `parse_config` (here), the dataclasses (`model.py`), one module
per table family (`tables.py`, `federation.py`, `accounts.py`, `mfa.py`), the value parsers
(`values.py`) and `masked` (`masking.py`).

Must not: import aiohttp, open sockets or files other than the config and the key files it names,
or log anything (a Config holds secrets).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from gateway.config.accounts import _accounts, _email
from gateway.config.federation import _identity_providers
from gateway.config.masking import masked
from gateway.config.mfa import _second_factors
from gateway.config.model import (
    AccountsConfig,
    AuthMode,
    Config,
    CookieConfig,
    CsrfConfig,
    EmailConfig,
    IdentityHeadersConfig,
    IdentityProviderConfig,
    LimitsConfig,
    LogConfig,
    MfaConfig,
    Rate,
    RouteConfig,
    ServerConfig,
    StoreConfig,
    TokenConfig,
    WebAuthnConfig,
)
from gateway.config.tables import _cookies, _routes, _server, _tokens
from gateway.config.values import (
    _choice,
    _header_name,
    _origin,
    _parse_rate,
    _store_url,
    _str_list,
    _substitute_env,
    _Table,
    parse_duration,
    parse_size,
)
from gateway.core.casefold import fold_case
from gateway.core.errors import ConfigError

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
    own = fold_case(server.auth_prefix)
    for i, route in enumerate(routes):
        if route.prefix == server.auth_prefix or route.prefix.startswith(server.auth_prefix + "/"):
            problems.append(f"routes[{i}].prefix: {route.prefix!r} lies under server.auth_prefix and would never be reached")
        elif (p := fold_case(route.prefix)) == own or p.startswith(own + "/"):
            problems.append(
                f"routes[{i}].prefix: {route.prefix!r} lies under server.auth_prefix if case is ignored, and would"
                " never be reached (its paths are refused as ambiguous_path)"
            )
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


