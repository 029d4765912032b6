"""Structured log lines: one JSON object per line, with an event name and fields.

Theory of operation
-------------------
Processes log state changes worth knowing (started, refused a connection, resolved a stale intent,
drove a transaction to completion, failed a flush) as single-line JSON on stderr, so a person can
``grep`` a txn id across every process's log and a tool can parse them. :func:`log_event` attaches
the fields; :class:`JsonFormatter` renders them with the time, level, process name and logger.
:func:`configure_logging` installs it on the root logger; ``KVSTORE_LOG_LEVEL`` sets the level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "configure_logging", "log_event"]

_FIELDS_ATTR = "kv_fields"


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": self.process_name,
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS_ATTR, {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_logging(process_name: str) -> None:
    """Send every log line of this process to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("KVSTORE_LOG_LEVEL", "INFO").upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (txn ids, partitions, counts) as JSON members."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS_ATTR: fields})
