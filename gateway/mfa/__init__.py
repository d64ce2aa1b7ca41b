"""Second factors: TOTP with recovery codes, passkeys (WebAuthn), the two-step login and what each proves (amr).

`secretbox` (keys and encryption at rest), `totp` and `recovery` (the code rules), `service` (enrolment,
the two-step login, reset), `passkeys` (WebAuthn ceremonies) are pure; `routes` is their HTTP face.

Must not: import aiohttp outside `routes`.
"""

from __future__ import annotations

__all__ = ["AMR_PASSKEY", "AMR_PASSWORD", "AMR_RECOVERY", "AMR_TOTP"]

# RFC 8176 values a session carries in every access token. A recovery code is a one-time password
# ("otp"); the audit log tells it apart from a TOTP code. A passkey login proves possession of a
# hardware-bound key ("hwk") and, with user verification required, that the authenticator checked
# the user ("user": PIN or biometrics, which the authenticator does not tell us) - two factors.
AMR_PASSWORD: tuple[str, ...] = ("pwd",)
AMR_TOTP: tuple[str, ...] = ("pwd", "otp", "mfa")
AMR_RECOVERY: tuple[str, ...] = ("pwd", "otp", "mfa")
AMR_PASSKEY: tuple[str, ...] = ("hwk", "user", "mfa")
