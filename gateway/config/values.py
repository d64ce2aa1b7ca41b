"""Parsers of single config values (durations, sizes, rates, names, URLs, networks) and `_Table`,
which reads one TOML table and collects every problem under its key path.

Must not: know any table's keys (the table modules do), or import aiohttp.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.config.model import _RATE_UNITS, IpNetwork, Rate

_ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_COOKIE_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


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


