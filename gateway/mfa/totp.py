"""TOTP rules (RFC 6238: 30-second steps, 6 digits, SHA-1) on pyotp, and the enrolment QR code on segno.

Must not: import aiohttp or the store; it knows codes and time steps, not who uses them. Which step
was used last (a code works once) is the store's to keep.
"""

from __future__ import annotations

import hmac
import re

import pyotp
import segno

__all__ = ["STEP_SECONDS", "matching_step", "new_secret", "provisioning_uri", "qr_svg_data_uri"]

STEP_SECONDS = 30
# One step either side: a phone clock a little off, or a code typed as it changed.
VALID_WINDOW = 1
_CODE = re.compile(r"[0-9]{6}")  # ASCII only: compare_digest refuses other strings


def new_secret() -> str:
    """A random base32 secret of 160 bits (RFC 4226 recommends at least 128)."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """The `otpauth://totp/...` URI authenticator apps read."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def qr_svg_data_uri(uri: str) -> str:
    """The URI as a QR code, an SVG `data:` URI an `<img>` can show."""
    return str(segno.make(uri, error="m").svg_data_uri(scale=4))


def normalize_code(code: object) -> str | None:
    """The six digits of a code as typed (spaces allowed), or None."""
    if not isinstance(code, str):
        return None
    code = code.replace(" ", "").strip()
    return code if _CODE.fullmatch(code) else None


def matching_step(secret: str, code: str, *, now: float) -> int | None:
    """The time step (within the window around `now`) whose code is `code`, or None."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(int(now))
    for step in range(current + VALID_WINDOW, current - VALID_WINDOW - 1, -1):
        if hmac.compare_digest(totp.at(step * STEP_SECONDS), code):
            return step
    return None
