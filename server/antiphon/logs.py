"""Structured logging: one JSON object per line, with the session id on every line.

The session and turn ids live in context variables, so every log call made
while a stream is served carries them without passing them around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

session_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="")
turn_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("turn_id", default="")

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session_id = session_id_var.get()
        record.turn_id = turn_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and value not in ("", None):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        sid = getattr(record, "session_id", "")
        line = f"{stamp} {record.levelname[0]} {record.name}: {record.getMessage()}"
        if sid:
            line += f" [session={sid}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
