"""What every kvctl command shares: ``--json`` or text output, one-line errors, exit statuses.

Theory of operation
-------------------
A command handler is ``handler(args, out) -> int``: it prints through an :class:`Output` and
returns an exit status. With ``--json`` it prints one JSON document on stdout (streams print one
JSON object per line) with stable keys, for scripts; otherwise text for people, tables drawn by
``rich`` (no colour or cursor tricks when stdout is not a terminal). :func:`run_handler` is the one
place errors are turned into output: a :class:`~kvstore.errors.KvError` prints ``kvctl:
<message>`` on stderr (with ``--json``: one line ``{"error": {code, number, message, retryable,
exit_status, ...}}``) and exits with the status its catalogue code maps to; an ``OSError`` is a
one-line message and status 1 (a full disk: ``no space left on device writing PATH``); Ctrl-C
is status 130. Never a traceback: a traceback is a bug
report, and kvctl's errors are answers.

Exit statuses
-------------
One mapping, :data:`EXIT_STATUS_BY_CODE`, from every :class:`~kvstore.errors.ErrorCode` (checked
at import to cover them all) to a status chosen by what a script should do next:

====  =====================  ================================================================
exit  name                   codes
====  =====================  ================================================================
0     ``EXIT_OK``            success
1     ``EXIT_FAILURE``       InternalError, ProtocolViolation (a bug or a version mismatch), and
                             any OSError (a file kvctl could not read or write)
2     ``EXIT_USAGE``         ValidationError, TooLarge; also argparse's usage errors
3     ``EXIT_NOT_FOUND``     NotFound (no such key, record, or local cluster)
4     ``EXIT_REFUSED``       ConditionFailed, TransactionCanceled, IdempotencyMismatch,
                             SnapshotTooOld: the store decided, and said no
5     ``EXIT_AUTH``          Unauthorized, Forbidden
6     ``EXIT_UNAVAILABLE``   the retryable codes (TransactionConflict, TimestampTooOld,
                             TransactionInProgress, ClockSkew, Overloaded, Unavailable,
                             WrongOwner, DiskFull): the same command may succeed later
7     ``EXIT_UNKNOWN``       OutcomeUnknown: it may or may not have happened; retry only with
                             the same idempotency token
130   ``EXIT_INTERRUPTED``   Ctrl-C
====  =====================  ================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Final, TextIO

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from kvstore.errors import ErrorCode, KvError

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_NOT_FOUND",
    "EXIT_REFUSED",
    "EXIT_AUTH",
    "EXIT_UNAVAILABLE",
    "EXIT_UNKNOWN",
    "EXIT_INTERRUPTED",
    "EXIT_STATUS_BY_CODE",
    "exit_status",
    "Handler",
    "Output",
    "run_handler",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_REFUSED: Final = 4
EXIT_AUTH: Final = 5
EXIT_UNAVAILABLE: Final = 6
EXIT_UNKNOWN: Final = 7
EXIT_INTERRUPTED: Final = 130

_DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_PIPE_WIDTH: Final = 200  # columns of text output when stdout is not a terminal

EXIT_STATUS_BY_CODE: Final[Mapping[ErrorCode, int]] = MappingProxyType(
    {
        # 1xxx retryable: the same command may succeed later.
        ErrorCode.TransactionConflict: EXIT_UNAVAILABLE,
        ErrorCode.TimestampTooOld: EXIT_UNAVAILABLE,
        ErrorCode.TransactionInProgress: EXIT_UNAVAILABLE,
        ErrorCode.ClockSkew: EXIT_UNAVAILABLE,
        ErrorCode.Overloaded: EXIT_UNAVAILABLE,
        ErrorCode.Unavailable: EXIT_UNAVAILABLE,
        ErrorCode.WrongOwner: EXIT_UNAVAILABLE,
        ErrorCode.DiskFull: EXIT_UNAVAILABLE,
        # 2xxx caller mistakes and definite refusals.
        ErrorCode.ValidationError: EXIT_USAGE,
        ErrorCode.TooLarge: EXIT_USAGE,
        ErrorCode.NotFound: EXIT_NOT_FOUND,
        ErrorCode.ConditionFailed: EXIT_REFUSED,
        ErrorCode.TransactionCanceled: EXIT_REFUSED,
        ErrorCode.IdempotencyMismatch: EXIT_REFUSED,
        ErrorCode.Unauthorized: EXIT_AUTH,
        ErrorCode.Forbidden: EXIT_AUTH,
        ErrorCode.ProtocolViolation: EXIT_FAILURE,
        ErrorCode.SnapshotTooOld: EXIT_REFUSED,
        # 3xxx ambiguous.
        ErrorCode.OutcomeUnknown: EXIT_UNKNOWN,
        # 9xxx internal.
        ErrorCode.InternalError: EXIT_FAILURE,
    }
)
assert set(EXIT_STATUS_BY_CODE) == set(ErrorCode), "every catalogue code needs an exit status"


def exit_status(code: ErrorCode) -> int:
    """The exit status of a command that failed with ``code``."""
    return EXIT_STATUS_BY_CODE[code]


class Output:
    """Where a command prints: JSON or text on stdout, errors on stderr."""

    def __init__(
        self, *, json_mode: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        # Piped output keeps its natural width (rich would squeeze tables to 80 columns).
        terminal = Console(file=self.stdout).is_terminal
        self.console = Console(
            file=self.stdout, highlight=False, width=None if terminal else _PIPE_WIDTH
        )

    # --- JSON ----------------------------------------------------------------------------

    def json(self, document: object) -> None:
        """One JSON document (indented) on stdout."""
        self.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        self.stdout.flush()

    def json_line(self, document: object) -> None:
        """One JSON object on one line (streams)."""
        self.stdout.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.stdout.flush()

    # --- text ----------------------------------------------------------------------------

    def line(self, text: str | Text = "") -> None:
        """One line for people, printed as is (no markup is interpreted in a ``str``)."""
        self.console.print(text, markup=False, soft_wrap=True)

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[object]],
        *,
        title: str | None = None,
        right: Iterable[str] = (),
    ) -> None:
        """A table; ``None`` cells print as ``-``; columns named in ``right`` align right."""
        aligned = set(right)
        table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
        for column in columns:
            table.add_column(column, justify="right" if column in aligned else "left")
        for row in rows:
            table.add_row(*(_cell(value) for value in row))
        self.console.print(table)

    def spinner(self, message: str) -> contextlib.AbstractContextManager[object]:
        """A transient spinner on stderr while something slow runs: only on a terminal and
        never with --json, so scripts and logs see nothing of it."""
        console = Console(file=self.stderr)
        if self.json_mode or not console.is_terminal:
            return contextlib.nullcontext()
        return console.status(message)

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[Callable[[float], None]]:
        """A transient progress bar on stderr; yields ``update(fraction done)``. Like the
        spinner, only on a terminal and never with --json (``update`` then does nothing)."""
        console = Console(file=self.stderr)
        if self.json_mode or not console.is_terminal:
            yield lambda _fraction: None
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=1.0)
            yield lambda fraction: bar.update(task, completed=fraction)

    # --- errors --------------------------------------------------------------------------

    def error(self, message: str, *, status: int, kv_error: KvError | None = None) -> int:
        """Report a failure on stderr; returns ``status``."""
        if self.json_mode:
            body: dict[str, object] = (
                kv_error.to_json() if kv_error is not None else {"code": None, "message": message}
            )
            body["exit_status"] = status
            self.stderr.write(json.dumps({"error": body}, ensure_ascii=False) + "\n")
        else:
            self.stderr.write(f"kvctl: {message}\n")
        self.stderr.flush()
        return status


def _cell(value: object) -> str | Text:
    if value is None:
        return "-"
    if isinstance(value, Text):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


Handler = Callable[[argparse.Namespace, Output], int]


def run_handler(handler: Handler, args: argparse.Namespace, out: Output) -> int:
    """Run one command; every error becomes a line on stderr and an exit status."""
    try:
        return handler(args, out)
    except KvError as error:
        return out.error(error.message, status=exit_status(error.code), kv_error=error)
    except BrokenPipeError:
        # stdout went away (``kvctl ... | head``): stop quietly, and keep the interpreter's
        # final flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILURE
    except OSError as error:
        if error.errno in _DISK_FULL_ERRNOS:  # one plain line: the path, the cause, what to do
            where = f" writing {error.filename}" if error.filename else ""
            return out.error(
                f"no space left on device{where}: free space on that file system, then retry",
                status=EXIT_FAILURE,
            )
        where = f" ({error.filename})" if error.filename else ""
        return out.error(f"{error.strerror or error}{where}", status=EXIT_FAILURE)
    except KeyboardInterrupt:
        return out.error("interrupted", status=EXIT_INTERRUPTED)
