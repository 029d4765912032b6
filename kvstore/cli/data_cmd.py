"""``kvctl get/put/delete/scan/txn/read``: the data commands, through the Python SDK.

Theory of operation
-------------------
**Connection.** Each command opens one blocking SDK client (``kvstore.connect_sync``) the way the
SDK finds a cluster: ``--url`` and ``--token``, else ``$KV_URL``/``$KV_TOKEN``, else the local
cluster directory (``--dir``, ``$KVSTORE_DIR``, ``./.kvstore``), which the SDK reaches in native
mode (msgpack RPC to the nodes, with the cluster secret); ``--direct`` embeds the coordinator
library and talks to the storage nodes itself. kvctl works
out which of these applies (:func:`_target`) before calling the SDK, so that what is missing is
said in kvctl's terms (``--token``, ``--url``, ``--dir``, ``kvctl cluster up``), not in the SDK's
parameter names. When the cluster cannot be reached (``Unavailable``) and the connection goes
to a local cluster kvctl made (through its directory, or a URL naming one of its
processes), kvctl looks at which of its processes run (the process table, no network) and,
when some are stopped, says so and suggests ``kvctl cluster up``. A remote URL that cannot be
reached is named with the OS's reason, nothing more. In native and direct mode the SDK's log
lines (which name internal addresses) are dropped: the command's error is the answer.

**JSON arguments.** A value, a condition (``--if``) and ``txn``'s ops are each one JSON argument:
the JSON text itself, ``-`` for stdin, or ``@PATH`` for a file. Neither ``-`` nor ``@...`` is
JSON, so nothing is ambiguous: a string value that starts with ``@`` is written, like every
string, with its JSON quotes (``'"@home"'``). Stdin and files are read up to
``KVCTL_INPUT_BYTES_MAX`` bytes (else ``TooLarge``) and must be UTF-8 JSON; stdin feeds at most
one argument of a command. A missing or unreadable file, text that is not JSON, and a value
over ``VALUE_BYTES_MAX`` are ``ValidationError`` (exit 2), found before anything is sent.

**Snapshot reads.** ``read --at TS`` reads the keys as of a timestamp the store returned (a
commit's or an item's ``ts``, within the snapshot window): the SDK's ``read(keys, at=...)``. The
timestamp's form is checked before anything is sent; the answer says what it is as of.

**Output.** Text for people (tables for many items), ``--json`` for scripts. ``scan`` streams
one JSON object per item, then one summary line ``{"count", "more", "next_start"?}``. With
``--limit N`` it asks for one item more than it shows, so it can tell that more exist, and
from which key to continue (``--start``), without another scan. A scan that runs longer than a
second shows a progress counter on stderr when stderr is a terminal. Errors are the
catalogue's and map to exit statuses in :mod:`kvstore.cli.output`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn

from kvstore.cli.output import EXIT_NOT_FOUND, EXIT_OK, Output
from kvstore.errors import KvError, NotFound, TooLarge, Unavailable, ValidationError
from kvstore.limits import (
    KVCTL_INPUT_BYTES_MAX,
    SCAN_LIMIT_DEFAULT,
    SCAN_PAGE_ITEMS_MAX,
    SNAPSHOT_WINDOW_MS,
    VALUE_BYTES_MAX,
)
from kvstore.localcluster import CLUSTER_FILE, LocalCluster, resolve_dir
from kvstore.timestamps import parse_timestamp
from kvstore.values import validate_value

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands
    from kvstore.client import Item, SyncClient

__all__ = ["register", "json_argument", "txn_ops"]

STDIN: Final = "-"  # a JSON argument read from stdin
FILE_PREFIX: Final = "@"  # a JSON argument read from the file named after it

_PROGRESS_AFTER_S: Final = 1.0
_VALUE_SHOWN_CHARS: Final = 60
_JSON_ARGUMENT_HELP: Final = "JSON text, @FILE, or - for stdin"


# --- JSON arguments ------------------------------------------------------------------------


def _read_bounded(stream: BinaryIO, source: str, field: str) -> str:
    data = stream.read(KVCTL_INPUT_BYTES_MAX + 1)
    if len(data) > KVCTL_INPUT_BYTES_MAX:
        raise TooLarge(
            f"{field}: {source} holds more than {KVCTL_INPUT_BYTES_MAX} bytes",
            details={"field": field, "limit_bytes": KVCTL_INPUT_BYTES_MAX},
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(field, f"{source} is not UTF-8 text") from None


def _read_file(name: str, field: str) -> str:
    if not name:
        raise ValidationError(field, f"{FILE_PREFIX} needs a file name: {FILE_PREFIX}PATH")
    path = Path(name).expanduser()
    try:
        with path.open("rb") as file:
            return _read_bounded(file, name, field)
    except FileNotFoundError:
        raise ValidationError(field, f"no file {name}") from None
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else "unreadable"
        raise ValidationError(field, f"cannot read {name}: {reason.lower()}") from None


def _not_json_hint(argument: str, field: str) -> str:
    """What the user probably meant, for a command-line argument that is not JSON."""
    try:
        names_a_file = bool(argument) and Path(argument).expanduser().is_file()
    except (OSError, ValueError):  # not a possible path name (too long, for one)
        names_a_file = False
    if names_a_file:
        return f" (to read the file, write {FILE_PREFIX}{argument})"
    if field == "value":
        return f" (a string needs JSON quotes: '\"text\"'; {FILE_PREFIX}FILE reads a file)"
    return f" ({FILE_PREFIX}FILE reads a file, - reads stdin)"


def json_argument(argument: str, field: str) -> Any:
    """A JSON argument (see the module): the JSON text, ``-`` (stdin) or ``@PATH`` (a file)."""
    if argument == STDIN:
        text, source = _read_bounded(sys.stdin.buffer, "stdin", field), "stdin"
    elif argument.startswith(FILE_PREFIX):
        name = argument[len(FILE_PREFIX) :]
        text, source = _read_file(name, field), name
    else:
        text, source = argument, ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"{source} is not JSON" if source else "not JSON"
        hint = "" if source else _not_json_hint(argument, field)
        at = f" at line {error.lineno} column {error.colno}" if source else ""
        raise ValidationError(field, f"{where}: {error.msg}{at}{hint}") from None
    except RecursionError:
        raise ValidationError(field, f"{source or 'the JSON'} is nested too deeply") from None


def _stdin_once(**arguments: str | None) -> None:
    """Stdin can feed one JSON argument of a command, not two."""
    fed = [name for name, argument in arguments.items() if argument == STDIN]
    if len(fed) > 1:
        raise ValidationError(
            fed[1], f"stdin already feeds {fed[0]}; give this one as JSON or {FILE_PREFIX}FILE"
        )


def txn_ops(document: object, source: str) -> tuple[list[Any], str | None]:
    """``kvctl txn``'s ops: a list of ops, or ``{"ops": [...], "token"?: str}``."""
    if isinstance(document, list):
        return document, None
    if isinstance(document, dict) and "ops" in document:
        unknown = sorted(set(document) - {"ops", "token"})
        if unknown:
            raise ValidationError(unknown[0], f"unknown member in {source}; allowed: ops, token")
        ops, token = document["ops"], document.get("token")
        if not isinstance(ops, list):
            raise ValidationError("ops", f"{source}: ops must be a list")
        if token is not None and not isinstance(token, str):
            raise ValidationError("token", f"{source}: token must be a string")
        return ops, token
    raise ValidationError("ops", f'{source} must hold a list of ops or {{"ops": [...]}}')


def _condition(args: argparse.Namespace) -> Any:
    return None if args.if_ is None else json_argument(args.if_, "if")


# --- connection ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a data command connects, as the SDK will find it."""

    url: str | None  # None: the local cluster's first coordinator (or direct mode)
    token: str | None  # None: the local cluster's admin token (or direct mode)
    cluster: str | None  # the cluster file or directory for the SDK
    local: Path | None  # the local cluster directory the connection goes through, if any


def _dir_option(root: Path) -> str:
    """`` --dir X`` when ``root`` is not what kvctl finds without ``--dir``."""
    return "" if root == resolve_dir(None) else f" --dir {shlex.quote(str(root))}"


def _target(args: argparse.Namespace) -> _Target:
    """The connection (see the module), with what is missing said in kvctl's terms."""
    from kvstore.client.connection import ENV_TOKEN, ENV_URL  # noqa: PLC0415 - the SDK loads late

    if args.direct and (args.url is not None or args.token is not None):
        raise ValidationError(
            "--direct", "goes without --url and --token: it reads the cluster directory (--dir)"
        )
    url = args.url if args.url is not None else os.environ.get(ENV_URL) or None
    token = args.token if args.token is not None else os.environ.get(ENV_TOKEN) or None
    if args.direct or url is None:
        root = resolve_dir(args.dir)
        file = root if root.suffix == ".toml" else root / CLUSTER_FILE
        if not file.is_file():
            raise NotFound(
                f"no cluster in {root}: run `kvctl cluster up{_dir_option(root)}`, or pass --url "
                "and --token (or set KV_URL and KV_TOKEN)",
                details={"dir": str(root)},
            )
        return _Target(None, None if args.direct else token, str(file), file.parent)
    if token is None and args.dir is None:
        raise ValidationError("--token", f"no API token for {url}: pass --token or set {ENV_TOKEN}")
    return _Target(url, token, args.dir, None)


def _local_cluster(args: argparse.Namespace, target: _Target) -> LocalCluster | None:
    """The local cluster kvctl made that ``target`` goes to, if any."""
    root = target.local if target.local is not None else resolve_dir(args.dir)
    try:
        cluster = LocalCluster.open(root)
    except (KvError, OSError):
        return None  # no cluster there, or not one kvctl made: it cannot start it
    if target.url is not None:
        urls = {spec.url for spec in cluster.processes()}  # every node serves the API too
        if target.url.rstrip("/") not in urls:
            return None
    return cluster


def _unreachable(error: Unavailable, args: argparse.Namespace, target: _Target) -> KvError:
    """``error``, or what stopped processes of a local cluster explain better."""
    cluster = _local_cluster(args, target)
    if cluster is None:
        return error
    try:
        running = cluster.running()
    except (KvError, OSError):
        return error
    stopped = [spec.process_id for spec in cluster.processes() if spec.process_id not in running]
    if not stopped:
        return error
    up = f"`kvctl cluster up{_dir_option(cluster.root)}`"
    if running:
        message = (
            f"the local cluster in {cluster.root} is partly down ({', '.join(stopped)} not "
            f"running); start what is stopped with {up}"
        )
    else:
        message = f"the local cluster in {cluster.root} is not running; start it with {up}"
    return Unavailable(message, details={**error.details, "stopped": stopped})


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[SyncClient]:
    import kvstore  # noqa: PLC0415 - the SDK (and aiohttp) load only for data commands

    target = _target(args)
    if target.url is None:
        # Native and direct mode log what a service logs (a node they cannot reach, with its
        # internal address); a command answers with its one-line error instead.
        logging.getLogger("kvstore").addHandler(logging.NullHandler())
    try:
        with kvstore.connect_sync(
            url=target.url, token=target.token, cluster=target.cluster, direct=args.direct
        ) as kv:
            yield kv
    except Unavailable as error:
        raise _unreachable(error, args, target) from None


# --- handlers ------------------------------------------------------------------------------


def _item_json(item: Item) -> dict[str, object]:
    return {"key": item.key, "value": item.value, "version": item.version, "ts": item.ts}


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _VALUE_SHOWN_CHARS else text[: _VALUE_SHOWN_CHARS - 1] + "…"


def _get(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as kv:
        item = kv.get(args.key)
    if item is None:
        error = NotFound(f"no item with key {args.key!r}", details={"key": args.key})
        return out.error(error.message, status=EXIT_NOT_FOUND, kv_error=error)
    if out.json_mode:
        out.json(_item_json(item))
    else:
        out.line(json.dumps(item.value, ensure_ascii=False, indent=2))
        out.line(f"(version {item.version}, ts {item.ts})")
    return EXIT_OK


def _put(args: argparse.Namespace, out: Output) -> int:
    _stdin_once(value=args.value, **{"if": args.if_})
    value = validate_value(json_argument(args.value, "value"))
    condition = _condition(args)
    with _client(args) as kv:
        written = kv.put(args.key, value, if_=condition)
    if out.json_mode:
        out.json({"key": args.key, "version": written.version, "ts": written.ts})
    else:
        out.line(f"{args.key}: version {written.version} (ts {written.ts})")
    return EXIT_OK


def _delete(args: argparse.Namespace, out: Output) -> int:
    condition = _condition(args)
    with _client(args) as kv:
        deleted = kv.delete(args.key, if_=condition)
    if out.json_mode:
        out.json({"key": args.key, "deleted": deleted.deleted, "ts": deleted.ts})
    else:
        out.line(f"{args.key}: {'deleted' if deleted.deleted else 'was absent'} (ts {deleted.ts})")
    return EXIT_OK


def _scan(args: argparse.Namespace, out: Output) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValidationError("--limit", "must be a positive integer")
    items: list[Item] = []
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        transient=True,
        console=Console(file=out.stderr),
    )
    # One item beyond --limit tells whether more exist, and where they start.
    wanted = SCAN_LIMIT_DEFAULT if args.limit is None else args.limit + 1
    count, next_start = 0, None
    started = time.monotonic()
    with _client(args) as kv, progress:
        task = progress.add_task("scanning", total=None, visible=False)
        pages = kv.scan(
            prefix=args.prefix,
            start=args.start,
            end=args.end,
            page_size=min(wanted, SCAN_PAGE_ITEMS_MAX),
        )
        for item in pages:
            if count == args.limit:
                next_start = item.key
                break
            count += 1
            if out.json_mode:
                out.json_line(_item_json(item))
            else:
                items.append(item)
            if time.monotonic() - started > _PROGRESS_AFTER_S:
                progress.update(task, visible=True, description=f"scanned {count} items")
    if out.json_mode:
        summary: dict[str, object] = {"count": count, "more": next_start is not None}
        if next_start is not None:
            summary["next_start"] = next_start
        out.json_line(summary)
        return EXIT_OK
    out.table(
        ["key", "version", "value"],
        ([item.key, item.version, _shown(item.value)] for item in items),
        right=["version"],
    )
    counted = f"{count} item{'' if count == 1 else 's'}"
    if next_start is not None:
        counted += (
            f"; more exist: raise --limit, or continue with --start {shlex.quote(next_start)}"
        )
    out.line(counted)
    return EXIT_OK


def _txn(args: argparse.Namespace, out: Output) -> int:
    if args.ops is None:
        if sys.stdin.isatty():
            raise ValidationError("ops", f"give the ops as JSON, {FILE_PREFIX}FILE, or on stdin")
        args.ops = STDIN
    if args.ops == STDIN:
        source = "stdin"
    elif args.ops.startswith(FILE_PREFIX):
        source = args.ops[len(FILE_PREFIX) :]
    else:
        source = "the ops"
    ops, token = txn_ops(json_argument(args.ops, "ops"), source)
    with _client(args) as kv:
        committed = kv.transact(ops, token=args.token_id or token)
    if out.json_mode:
        out.json({"committed": True, "txn_id": committed.txn_id, "ts": committed.ts})
    else:
        out.line(f"committed: txn {committed.txn_id} (ts {committed.ts}), {len(ops)} ops")
    return EXIT_OK


def _read(args: argparse.Namespace, out: Output) -> int:
    at = None if args.at is None else parse_timestamp(args.at, "--at")  # checked before sending
    with _client(args) as kv:
        items = kv.read(args.keys, at=at)
    if out.json_mode:
        answer: dict[str, object] = {
            "items": [
                _item_json(item) if item is not None else {"key": key, "found": False}
                for key, item in zip(args.keys, items, strict=True)
            ]
        }
        if at is not None:
            answer["at"] = str(at)
        out.json(answer)
    else:
        if at is not None:
            out.line(f"as of {at}")
        out.table(
            ["key", "version", "value"],
            (
                [key, item.version, _shown(item.value)] if item else [key, None, "(absent)"]
                for key, item in zip(args.keys, items, strict=True)
            ),
            right=["version"],
        )
    return EXIT_OK


# --- parsers -------------------------------------------------------------------------------

_JSON_ARGUMENTS_EPILOG: Final = (
    "JSON arguments (values, --if conditions, txn ops) are JSON text, @FILE (read the file) or "
    "- (read stdin; one argument per command). A string needs its JSON quotes, so a string "
    "that starts with @ is no file: '\"@home\"'. Files and stdin are read up to "
    f"{KVCTL_INPUT_BYTES_MAX // 1024 // 1024} MiB; a value is at most "
    f"{VALUE_BYTES_MAX // 1024} KiB encoded."
)


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url", help="a coordinator's API URL (default: $KV_URL, else the --dir cluster)"
    )
    options.add_argument(
        "--token",
        help="an API token (default: $KV_TOKEN; with the --dir cluster, its admin token)",
    )
    options.add_argument(
        "--direct",
        action="store_true",
        help="embed the coordinator and talk to the storage nodes (needs the cluster secret)",
    )
    return options


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add the data commands to ``commands``."""
    parents = [common, _connection_options()]

    get = commands.add_parser("get", parents=parents, help="read one item")
    get.add_argument("key")
    get.set_defaults(handler=_get)

    put = commands.add_parser(
        "put",
        parents=parents,
        help="write one item (durable)",
        epilog=_JSON_ARGUMENTS_EPILOG,
    )
    put.add_argument("key")
    put.add_argument(
        "value", help=f"the value: {_JSON_ARGUMENT_HELP} (a string needs quotes: '\"text\"')"
    )
    put.add_argument("--if", dest="if_", metavar="COND", help=f"a condition: {_JSON_ARGUMENT_HELP}")
    put.set_defaults(handler=_put)

    delete = commands.add_parser(
        "delete", parents=parents, help="delete one item", epilog=_JSON_ARGUMENTS_EPILOG
    )
    delete.add_argument("key")
    delete.add_argument(
        "--if", dest="if_", metavar="COND", help=f"a condition: {_JSON_ARGUMENT_HELP}"
    )
    delete.set_defaults(handler=_delete)

    scan = commands.add_parser(
        "scan",
        parents=parents,
        help="list items in key order",
        description="List items in key order. When --limit stops it before the end, the last "
        "line says so and names the key to continue from with --start. With --json: one line "
        'per item, then a summary line {"count", "more", "next_start"?}.',
    )
    scan.add_argument("--prefix")
    scan.add_argument("--start", help="the first key (inclusive)")
    scan.add_argument("--end", help="the key to stop before (exclusive)")
    scan.add_argument("--limit", type=int, help="at most this many items (default: all)")
    scan.set_defaults(handler=_scan)

    txn = commands.add_parser(
        "txn",
        parents=parents,
        help="run one write transaction (ops as JSON, from a file or stdin)",
        description='Ops as JSON: a list, or {"ops": [...], "token": ...}. See docs/api.md.',
        epilog=_JSON_ARGUMENTS_EPILOG,
    )
    txn.add_argument(
        "ops", nargs="?", metavar="OPS", help=f"the ops: {_JSON_ARGUMENT_HELP} (default: stdin)"
    )
    txn.add_argument("--token-id", help="the idempotency token (default: one is drawn)")
    txn.set_defaults(handler=_txn)

    read = commands.add_parser(
        "read", parents=parents, help="read several items at one instant (read-only transaction)"
    )
    read.add_argument("keys", nargs="+", metavar="KEY")
    read.add_argument(
        "--at",
        metavar="TS",
        help="read the items as of this timestamp (a commit's or an item's ts, at most "
        f"{SNAPSHOT_WINDOW_MS // 1000} s old): a snapshot read",
    )
    read.set_defaults(handler=_read)
