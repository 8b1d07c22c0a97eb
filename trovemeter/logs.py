"""Structured logging: one JSON object per line, with URL passwords masked on the way out."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# scheme://user:password@host -> scheme://user:***@host, wherever it appears in a log line.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?P<at>@)")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def mask_secrets_in_text(text: str) -> str:
    return _URL_PASSWORD.sub(r"\g<head>***\g<at>", text)


class JsonFormatter(logging.Formatter):
    """`logger.info("shovel.started", extra={"queue": q})` -> {"ts":..., "event": "shovel.started", "queue": q}."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask_secrets_in_text(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
