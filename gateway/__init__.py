"""An authentication gateway: an aiohttp reverse proxy that checks access tokens and owns sessions.

Must not: import aiohttp or do I/O at import time (the CLI and the pure modules import this package).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
