"""`[accounts]` and `[email]`: self-service accounts and the mail they send.

Must not: import aiohttp, or open an SMTP connection.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from gateway.config.model import AccountsConfig, EmailConfig
from gateway.config.values import _Table, parse_duration


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


