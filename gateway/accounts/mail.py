"""The account mails: plain-text templates rendered with `email.message.EmailMessage`.

Must not: import aiohttp; or build a header from user input by hand (EmailMessage refuses CR/LF in
a header value, so an address cannot smuggle in a `Bcc:`).
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Literal

from gateway.store import NewMail

__all__ = ["MailKind", "render_mail"]

MailKind = Literal["verify", "reset", "exists"]

_SUBJECTS: dict[MailKind, str] = {
    "verify": "Confirm your email address",
    "reset": "Reset your password",
    "exists": "You already have an account",
}

_BODIES: dict[MailKind, str] = {
    "verify": (
        "Someone signed up with this address. To confirm that it was you, open this link\n"
        "and press the button on the page:\n\n{link}\n\n"
        "The link works once and expires in {ttl}. If you did not sign up, ignore this mail.\n"
    ),
    "reset": (
        "Someone asked to reset the password of the account with this address. To choose a new\n"
        "password, open this link:\n\n{link}\n\n"
        "The link works once and expires in {ttl}; setting a new password signs out every session.\n"
        "If you did not ask for this, ignore this mail: your password stays as it is.\n"
    ),
    "exists": (
        "Someone tried to sign up with this address, but it already has an account.\n"
        "If that was you, sign in instead at\n\n{link}\n\n"
        "and if you forgot your password, ask for a reset link there. If it was not you, ignore this mail.\n"
    ),
}


def render_mail(kind: MailKind, *, sender: str, to: str, link: str, ttl: str = "") -> NewMail:
    """One account mail to `to`; raises ValueError for a header value with CR or LF."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = _SUBJECTS[kind]
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or None
    msg["Message-ID"] = make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    msg.set_content(_BODIES[kind].format(link=link, ttl=ttl))
    return NewMail(sender=parseaddr(sender)[1], recipient=to, message=msg.as_string())
