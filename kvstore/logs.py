"""Structured log lines: one JSON object per line, with an event name and fields.

Theory of operation
-------------------
Processes log state changes worth knowing (started, refused a connection, resolved a stale intent,
drove a transaction to completion, failed a flush) as single-line JSON on stderr, so a person can
``grep`` a txn id across every process's log and a tool can parse them. :func:`log_event` attaches
the fields; :class:`JsonFormatter` renders them with the time, level, process name and logger.
:func:`configure_logging` installs it on the root logger; ``KVSTORE_LOG_LEVEL`` sets the level.

Bad input must not turn into a flood of log lines (one line per malformed frame would let any
peer fill the disk): a warning that can repeat per request or per connection goes through a
:class:`RepeatedLog`, which logs the first occurrence of each kind at once, then at most one
line per interval (``LOG_REPEAT_INTERVAL_MS`` unless told otherwise) with the count of those it
did not log. The RPC server uses one for malformed and oversize frames, refused handshakes and
failed connections; the RPC client for a peer it cannot reach.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any

from kvstore.limits import LOG_REPEAT_INTERVAL_MS

__all__ = ["JsonFormatter", "RepeatedLog", "configure_logging", "log_event"]

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


class RepeatedLog:
    """Log a repeating line the first time, then at most once per ``interval_ms`` per key,
    with the count of lines not logged since (see the module). Keys name a kind of event (a
    fixed set, e.g. ``"malformed_frame"``), not a peer: at most ``keys_max`` are remembered."""

    __slots__ = ("_clock", "_interval_s", "_keys", "_keys_max", "_logger")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_ms: int = LOG_REPEAT_INTERVAL_MS,
        clock: Callable[[], float] = time.monotonic,
        keys_max: int = 256,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_ms / 1000
        self._clock = clock
        self._keys_max = keys_max
        self._keys: dict[Hashable, list[Any]] = {}  # key -> [next log time, lines not logged]

    def log(
        self, key: Hashable, level: int, message: str, *args: object, exc_info: bool = False
    ) -> bool:
        """Log ``message % args`` unless a line of ``key`` was logged less than the interval
        ago (then only count it); a line after a pause says how many were not logged."""
        now = self._clock()
        state = self._keys.get(key)
        if state is not None and now < state[0]:
            state[1] += 1
            return False
        skipped = 0 if state is None else state[1]
        if state is None:
            if len(self._keys) >= self._keys_max:
                del self._keys[next(iter(self._keys))]  # the oldest key
            state = self._keys[key] = [0.0, 0]
        state[0], state[1] = now + self._interval_s, 0
        if skipped:
            message += " (and %d more like it not logged since the previous line)"
            args = (*args, skipped)
        self._logger.log(level, message, *args, exc_info=exc_info)
        return True

    def not_logged(self, key: Hashable) -> int:
        """Lines of ``key`` counted and not logged since its last line."""
        state = self._keys.get(key)
        return 0 if state is None else int(state[1])

    def reset(self, key: Hashable) -> None:
        """Forget ``key`` (its run is over): its next line is logged at once."""
        self._keys.pop(key, None)
