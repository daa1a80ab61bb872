"""Self-logs as JSON lines on stderr. Secrets never reach here: options hold file paths, not secrets,
and messages name files, never their contents."""
from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
    set_level(level)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    """The self-log level (at start, and when a reload changes log_level)."""
    logging.getLogger().setLevel(level)
    # aiokafka logs every failed connection attempt at ERROR; our sender reports outages itself.
    numeric = logging.getLevelName(level)
    logging.getLogger("aiokafka").setLevel(max(numeric, logging.WARNING) if isinstance(numeric, int)
                                           else logging.WARNING)
