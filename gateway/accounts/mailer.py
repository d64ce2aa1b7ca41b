"""The SMTP client (aiosmtplib) that delivers one outbox mail to the configured relay.

`smtp://` upgrades with STARTTLS when the server offers it, `smtps://` speaks TLS from the first
byte; `user:pass@` in the URL logs in (percent-decoded).

Must not: import aiohttp; log a password or a mail's text (it holds a token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiosmtplib

from gateway.store import OutboxMail

__all__ = ["DeliveryError", "SmtpMailer"]


class DeliveryError(Exception):
    """A failed delivery; `permanent` when the server refused the mail itself (5xx), not a passing fault."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class SmtpMailer:
    """Sends each mail over a connection of its own; the outbox sends few and rarely."""

    url: str = field(repr=False)
    timeout: float = 20.0

    async def send(self, mail: OutboxMail) -> None:
        """Delivers `mail`; raises DeliveryError."""
        parts = urlsplit(self.url)
        tls = parts.scheme == "smtps"
        try:
            await aiosmtplib.send(
                mail.message,
                sender=mail.sender,
                recipients=[mail.recipient],
                hostname=parts.hostname,
                port=parts.port or (465 if tls else 25),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                use_tls=tls,
                start_tls=False if tls else None,  # None: STARTTLS when the server offers it
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise DeliveryError(f"recipient refused: {codes}", permanent=all(c >= 500 for c in codes)) from exc
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as exc:
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}", permanent=exc.code >= 500) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", permanent=False) from exc
