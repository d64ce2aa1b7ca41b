"""`[mfa]` and `[webauthn]`: second factors and passkeys.

Must not: import aiohttp.
"""

from __future__ import annotations

import re

from gateway.config.model import MfaConfig, WebAuthnConfig
from gateway.config.values import _origin, _secret, _str_list, _Table

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


