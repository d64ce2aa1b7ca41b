"""Owns the command line entry point that runs the demo upstream server.

Must not: import anything from `gateway`, or know about tokens or authentication.
"""

import argparse
import sys
from collections.abc import Sequence

from aiohttp import web

from upstream_demo.app import create_app

__all__ = ["main", "parse_args"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000


def _port(text: str) -> int:
    """Parse a TCP port, rejecting values a listener could not use."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    # Port 0 is refused because the startup message would then name a wrong port.
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse command line arguments; argparse exits with status 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m upstream_demo",
        description="Run the auth-unaware demo upstream HTTP server.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"bind port (default {DEFAULT_PORT})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted and return the process exit status."""
    args = parse_args(argv)
    host: str = args.host
    port: int = args.port

    def announce(_message: str) -> None:
        # aiohttp's default banner spans several lines; one line keeps logs greppable.
        print(f"upstream_demo listening on http://{host}:{port}", flush=True)

    try:
        web.run_app(create_app(), host=host, port=port, print=announce)
    except KeyboardInterrupt:
        # run_app swallows Ctrl+C once serving; this covers an interrupt during startup.
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
