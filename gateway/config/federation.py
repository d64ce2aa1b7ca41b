"""`[[identity_providers]]`: the OpenID providers of federated login.

Must not: contact a provider (discovery happens at startup, in gateway/federation), or import aiohttp.
"""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

from gateway.config.model import IdentityProviderConfig
from gateway.config.values import _secret, _str_list, _Table, parse_duration

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
