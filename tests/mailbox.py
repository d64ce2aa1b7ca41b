"""The test SMTP server (tests/smtp_server.py) as a separate process, and reading what it received."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support import missing_service

__all__ = ["Mailbox", "link_token"]

_SCRIPT = Path(__file__).with_name("smtp_server.py")


class Mailbox:
    """One SMTP server process on `port`, stoppable and startable again on the same port."""

    def __init__(self, maildir: Path, port: int) -> None:
        self.maildir = maildir
        self.port = port
        self.url = f"smtp://127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            missing_service("smtp", "aiosmtpd is not installed (pip install -e '.[test]')")
        self.proc = subprocess.Popen(
            [sys.executable, str(_SCRIPT), "--port", str(self.port), "--maildir", str(self.maildir)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            missing_service("smtp", f"the test SMTP server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    def stall(self, on: bool) -> None:
        """While on, the server holds every RCPT (a delivery that hangs mid-way)."""
        flag = self.maildir / "stall"
        if on:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def messages(self) -> list[EmailMessage]:
        out = []
        for path in sorted(self.maildir.glob("*.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages() if m["X-Envelope-To"] == address]

    async def wait_for(self, count: int, *, address: str | None = None, timeout: float = 15.0) -> list[EmailMessage]:
        """Polls until at least `count` mails (to `address`) arrived; fails the test after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.to(address) if address else self.messages()
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"expected {count} mail(s){' to ' + address if address else ''}, got {len(found)}")
            await asyncio.sleep(0.05)


def link_token(msg: EmailMessage, page: str) -> str:
    """The token of the `{page}?token=...` link in a mail's plain-text body."""
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    match = re.search(rf"/{re.escape(page)}\?token=([A-Za-z0-9_-]+)", body.get_content())
    assert match, body.get_content()
    return match.group(1)
