"""`masked(cfg)`: a config as plain data with every secret replaced, for `check-config` and logs.

Must not: import aiohttp, or return a secret.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.model import EmailConfig, Rate
from gateway.config.values import _UNITS

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
