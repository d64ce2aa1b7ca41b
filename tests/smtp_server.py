"""A real SMTP server for the tests, run as its own process: aiosmtpd, each mail saved as a file.

    python tests/smtp_server.py --port PORT --maildir DIR

Prints `ready` once it listens. Each accepted mail becomes DIR/<n>.eml (written, then renamed into
place, so a reader never sees half a mail). While DIR/stall exists, RCPT is held (then refused with
451), which lets a test stop a gateway in the middle of a delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Handler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        stall = self.maildir / "stall"
        deadline = time.monotonic() + 60
        while stall.exists():
            if time.monotonic() > deadline:
                return "451 stalled by the test"
            await asyncio.sleep(0.05)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            n = next(self.counter)
        name = f"{time.time_ns()}-{os.getpid()}-{n}"
        tmp = self.maildir / f".{name}.tmp"
        head = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        tmp.write_bytes(head.encode() + envelope.original_content)
        tmp.rename(self.maildir / f"{name}.eml")
        return "250 Message accepted"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    args = parser.parse_args()
    args.maildir.mkdir(parents=True, exist_ok=True)
    controller = Controller(_Handler(args.maildir), hostname="127.0.0.1", port=args.port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
