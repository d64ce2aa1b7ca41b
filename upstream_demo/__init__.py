"""Owns the public face of the bundled demo upstream server (re-exports the app factory).

Must not: import anything from `gateway`, or know about tokens or authentication.
"""

from upstream_demo.app import create_app

__all__ = ["create_app"]
