"""The gateway's named loggers and the JSON/text formatters that `cli.py` installs.

Must not: configure handlers at import time, or be handed a token, password, cookie or secret.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "access_log",
    "audit",
    "audit_log",
    "auth_log",
    "proxy_log",
    "store_log",
]

access_log = logging.getLogger("gateway.access")
audit_log = logging.getLogger("gateway.audit")
auth_log = logging.getLogger("gateway.auth")
proxy_log = logging.getLogger("gateway.proxy")
store_log = logging.getLogger("gateway.store")


def audit(event: str, **fields: Any) -> None:
    """One audit event: fields are ids, addresses and reasons only, never a credential."""
    audit_log.info(event, extra={"fields": {"event": event, **fields}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; structured `fields` passed in `extra` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None)
        text = " ".join(f"{k}={v}" for k, v in fields.items()) if fields else record.getMessage()
        line = f"{stamp} {record.levelname:<7} {record.name} {text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line
