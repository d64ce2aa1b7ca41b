"""The core tables: `[server]`, `[tokens]`, `[cookies]` and `[[routes]]` (with their policies).

Must not: import aiohttp, or read files other than the key files `[tokens]` names.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from gateway.authz.rules import Policy, compile_policy
from gateway.config.model import CookieConfig, RouteConfig, ServerConfig, TokenConfig
from gateway.config.values import (
    _ALGORITHMS,
    _choice,
    _cookie_name,
    _hsts,
    _networks,
    _optional_str,
    _origin,
    _path,
    _port,
    _positive_int,
    _prefix,
    _secret,
    _str_list,
    _Table,
    _upstream,
    _workers,
    parse_duration,
    parse_size,
)
from gateway.core.casefold import fold_case


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
    folded: dict[str, tuple[int, str]] = {}  # a prefix's case fold -> the first route with it
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
            elif (other := folded.get(fold_case(route.prefix))) is not None:
                problems.append(
                    f"routes[{i}].prefix: {route.prefix!r} differs from routes[{other[0]}].prefix {other[1]!r} only in"
                    " case; every path under either would be refused as ambiguous_path"
                )
            seen[route.prefix] = i
            folded.setdefault(fold_case(route.prefix), (i, route.prefix))
            routes.append(route)
    return tuple(routes)


