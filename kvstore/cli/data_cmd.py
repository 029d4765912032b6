"""``kvctl get/put/delete/scan/txn/read``: the data commands, through the Python SDK.

Theory of operation
-------------------
Each command opens one blocking SDK client (``kvstore.connect_sync``) the way the SDK finds a
cluster: ``--url`` and ``--token``, else ``$KV_URL``/``$KV_TOKEN``, else the local cluster
directory (``--dir``, ``$KVSTORE_DIR``, ``./.kvstore``); ``--direct`` embeds the coordinator
library and talks to the storage nodes with the cluster secret instead. Values and conditions
are given as JSON on the command line; ``kvctl txn`` reads its operations from a file or stdin
(a list of ops, or ``{"ops": [...], "token": ...}``). Errors are the catalogue's and map to exit
statuses in :mod:`kvstore.cli.output`; arguments are parsed and validated before anything is
sent. Output: text for people (tables for many items), ``--json`` for scripts (``scan`` streams
one JSON object per line). A scan that runs longer than a second shows a progress counter on
stderr when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn

from kvstore.cli.output import EXIT_NOT_FOUND, EXIT_OK, Output
from kvstore.errors import NotFound, ValidationError
from kvstore.limits import SCAN_LIMIT_DEFAULT, SCAN_PAGE_ITEMS_MAX

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands
    from kvstore.client import Item, SyncClient

__all__ = ["register", "parse_json_argument", "parse_txn_document"]

_PROGRESS_AFTER_S = 1.0
_VALUE_SHOWN_CHARS = 60


def parse_json_argument(text: str, field: str) -> Any:
    """A JSON value given on the command line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        hint = " (a string needs JSON quotes: '\"text\"')" if field == "value" else ""
        raise ValidationError(field, f"not JSON: {error.msg}{hint}") from None


def parse_txn_document(text: str, source: str) -> tuple[list[Any], str | None]:
    """``kvctl txn``'s input: a list of ops, or ``{"ops": [...], "token"?: str}``."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValidationError(
            "ops", f"{source} is not JSON: {error.msg} at line {error.lineno}"
        ) from None
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


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[SyncClient]:
    import kvstore  # noqa: PLC0415 - the SDK (and aiohttp) load only for data commands

    with kvstore.connect_sync(
        url=args.url, token=args.token, cluster=args.dir, direct=args.direct
    ) as kv:
        yield kv


def _item_json(item: Item) -> dict[str, object]:
    return {"key": item.key, "value": item.value, "version": item.version, "ts": item.ts}


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _VALUE_SHOWN_CHARS else text[: _VALUE_SHOWN_CHARS - 1] + "…"


def _condition(args: argparse.Namespace) -> Any:
    return None if args.if_ is None else parse_json_argument(args.if_, "if")


# --- handlers ------------------------------------------------------------------------------


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
    value = parse_json_argument(args.value, "value")
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
        raise ValidationError("limit", "must be a positive integer")
    items: list[Item] = []
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        transient=True,
        console=Console(file=out.stderr),
    )
    started = time.monotonic()
    with _client(args) as kv, progress:
        task = progress.add_task("scanning", total=None, visible=False)
        pages = kv.scan(
            prefix=args.prefix,
            start=args.start,
            end=args.end,
            page_size=min(args.limit or SCAN_LIMIT_DEFAULT, SCAN_PAGE_ITEMS_MAX),
        )
        for count, item in enumerate(pages, start=1):
            if out.json_mode:
                out.json_line(_item_json(item))
            else:
                items.append(item)
            if time.monotonic() - started > _PROGRESS_AFTER_S:
                progress.update(task, visible=True, description=f"scanned {count} items")
            if args.limit is not None and count >= args.limit:
                break
    if not out.json_mode:
        out.table(
            ["key", "version", "value"],
            ([item.key, item.version, _shown(item.value)] for item in items),
            right=["version"],
        )
        out.line(f"{len(items)} items")
    return EXIT_OK


def _txn(args: argparse.Namespace, out: Output) -> int:
    if args.file == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text, source = Path(args.file).read_text(encoding="utf-8"), args.file
        except FileNotFoundError:
            raise ValidationError("file", f"no file {args.file!r}") from None
        except UnicodeDecodeError:
            raise ValidationError("file", f"{args.file} is not UTF-8 text") from None
    ops, token = parse_txn_document(text, source)
    with _client(args) as kv:
        committed = kv.transact(ops, token=args.token_id or token)
    if out.json_mode:
        out.json({"committed": True, "txn_id": committed.txn_id, "ts": committed.ts})
    else:
        out.line(f"committed: txn {committed.txn_id} (ts {committed.ts}), {len(ops)} ops")
    return EXIT_OK


def _read(args: argparse.Namespace, out: Output) -> int:
    with _client(args) as kv:
        items = kv.read(args.keys)
    if out.json_mode:
        out.json(
            {
                "items": [
                    _item_json(item) if item is not None else {"key": key, "found": False}
                    for key, item in zip(args.keys, items, strict=True)
                ]
            }
        )
    else:
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


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", help="a coordinator's API URL (default: $KV_URL, else --dir)")
    options.add_argument("--token", help="an API token (default: $KV_TOKEN, else --dir)")
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

    put = commands.add_parser("put", parents=parents, help="write one item (durable)")
    put.add_argument("key")
    put.add_argument("value", help="the value, as JSON (a string needs quotes: '\"text\"')")
    put.add_argument("--if", dest="if_", metavar="COND", help="a condition, as JSON")
    put.set_defaults(handler=_put)

    delete = commands.add_parser("delete", parents=parents, help="delete one item")
    delete.add_argument("key")
    delete.add_argument("--if", dest="if_", metavar="COND", help="a condition, as JSON")
    delete.set_defaults(handler=_delete)

    scan = commands.add_parser("scan", parents=parents, help="list items in key order")
    scan.add_argument("--prefix")
    scan.add_argument("--start", help="the first key (inclusive)")
    scan.add_argument("--end", help="the key to stop before (exclusive)")
    scan.add_argument("--limit", type=int, help="at most this many items (default: all)")
    scan.set_defaults(handler=_scan)

    txn = commands.add_parser(
        "txn",
        parents=parents,
        help="run one write transaction from a JSON file or stdin",
        description='Ops as JSON: a list, or {"ops": [...], "token": ...}. See docs/api.md.',
    )
    txn.add_argument("file", nargs="?", default="-", help="a JSON file, or - for stdin")
    txn.add_argument("--token-id", help="the idempotency token (default: one is drawn)")
    txn.set_defaults(handler=_txn)

    read = commands.add_parser(
        "read", parents=parents, help="read several items at one instant (read-only transaction)"
    )
    read.add_argument("keys", nargs="+", metavar="KEY")
    read.set_defaults(handler=_read)
