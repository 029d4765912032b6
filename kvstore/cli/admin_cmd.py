"""``kvctl token/recover/inspect``: API tokens, stuck transactions, a partition in detail.

Theory of operation
-------------------
These commands act on a cluster through its files, not its API: the cluster file (``--config``,
else the local cluster directory's ``cluster.toml``: ``--dir``, ``$KVSTORE_DIR``, ``./.kvstore``),
the API token file it names, and the cluster secret for the storage nodes' internal RPC.

* ``token create NAME --role ROLE`` adds a token to the token file (mode 0600: it holds the token
  and its SHA-256 digest) and prints it, with the AWS credentials it makes for the DynamoDB
  endpoint (access key id: the name; secret access key: the token; docs/dynamodb.md);
  ``token revoke NAME`` removes it; ``token list`` shows names, roles and creation times (never
  a token). A token created before the file stored tokens cannot sign DynamoDB requests:
  revoke and create it again. Roles, least first:
  ``metrics`` (scrape ``/metrics`` of every process), ``read-only``, ``read-write``, ``admin``
  (also ``POST /v1/admin/recover``); docs/api.md. Coordinators and storage nodes pick changes up
  within a second, without a restart. On several hosts, copy the file to every host.
* ``recover`` lists transactions with an intent or an open ledger record older than
  ``--older-than-ms`` (default: the cluster's stale-intent time) via the nodes' ``inspect``
  method, then drives each with the recovery core (:mod:`kvstore.recover`); ``--dry-run`` only
  lists. Nodes do the same on their own every 200 ms: this shows it and makes it happen now.
  ``POST /v1/admin/recover`` (an admin token) runs the same from a coordinator, for operators
  without the cluster secret; ``--json`` prints the same objects as its ``transactions``.
* ``inspect PARTITION`` shows one partition's counts, oldest intents and open ledger records.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from kvstore.api.tokens import Role, create_token, list_tokens, revoke_token
from kvstore.cli.output import EXIT_NOT_FOUND, EXIT_OK, Output
from kvstore.config import ClusterConfig, load_cluster
from kvstore.errors import NotFound, ProtocolViolation, ValidationError
from kvstore.limits import INSPECT_ROWS_MAX, RPC_TIMEOUT_MS
from kvstore.localcluster import LocalCluster, resolve_dir
from kvstore.recover import Driven, drive, find_stuck, report_to_json
from kvstore.rpc import RpcPool
from kvstore.types import PartitionId

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands

__all__ = ["register"]


def _config(args: argparse.Namespace) -> ClusterConfig:
    if args.config is not None:
        return load_cluster(Path(args.config))
    return LocalCluster.open(resolve_dir(args.dir)).config


# --- token ---------------------------------------------------------------------------------


def _token_create(args: argparse.Namespace, out: Output) -> int:
    path = _config(args).api_tokens_file
    token = create_token(path, args.name, args.role)
    if out.json_mode:
        out.json(
            {
                "name": args.name,
                "role": args.role,
                "token": token,
                "aws_access_key_id": args.name,
                "aws_secret_access_key": token,
            }
        )
    else:
        out.line(f"created token {args.name!r} ({args.role}); keep it secret:")
        out.line(token)
        out.line("As AWS credentials for the DynamoDB endpoint (SigV4; docs/dynamodb.md):")
        out.line(f"  export AWS_ACCESS_KEY_ID={args.name} AWS_SECRET_ACCESS_KEY={token}")
    return EXIT_OK


def _token_revoke(args: argparse.Namespace, out: Output) -> int:
    path = _config(args).api_tokens_file
    if not revoke_token(path, args.name):
        error = NotFound(f"no token named {args.name!r} in {path}")
        return out.error(error.message, status=EXIT_NOT_FOUND, kv_error=error)
    if out.json_mode:
        out.json({"name": args.name, "revoked": True})
    else:
        out.line(f"revoked token {args.name!r}")
    return EXIT_OK


def _token_list(args: argparse.Namespace, out: Output) -> int:
    entries = list_tokens(_config(args).api_tokens_file)
    if out.json_mode:
        out.json([{"name": e.name, "role": e.role.value, "created": e.created} for e in entries])
    else:
        out.table(["name", "role", "created"], ([e.name, e.role.value, e.created] for e in entries))
    return EXIT_OK


# --- recover -------------------------------------------------------------------------------


def _recover(args: argparse.Namespace, out: Output) -> int:
    config = _config(args)
    older_than_ms = (
        args.older_than_ms
        if args.older_than_ms is not None
        else config.partition_config.intent_stale_ms
    )
    if older_than_ms < 0:
        raise ValidationError("older-than-ms", "must not be negative")
    with out.spinner("asking every partition for stuck transactions"):
        stuck = asyncio.run(find_stuck(config, older_than_ms=older_than_ms))
    with out.spinner(f"driving {len(stuck)} transactions"):
        driven = [] if args.dry_run or not stuck else asyncio.run(drive(config, stuck))
    if out.json_mode:
        out.json(report_to_json(stuck, driven))
        return EXIT_OK
    outcome = {d.txn_id: d for d in driven}
    if not stuck:
        out.line(f"no transaction stuck for more than {older_than_ms} ms")
        return EXIT_OK
    out.table(
        ["txn", "anchor", "state", "age ms", "intents", "now"],
        (
            [
                s.txn_id,
                s.anchor,
                s.state,
                s.age_ms,
                len(s.intents),
                "(dry run)" if args.dry_run else _driven_text(outcome.get(s.txn_id)),
            ]
            for s in stuck
        ),
        right=["anchor", "age ms", "intents"],
    )
    return EXIT_OK


def _driven_text(driven: Driven | None) -> str:
    if driven is None:
        return "-"
    if driven.error is not None:
        return f"{driven.state}: {driven.error}"
    if driven.state in ("PREPARING", "STAGING"):
        return "undecided; its coordinator has until the deadline, then its anchor decides it"
    return f"{driven.state}, {'completed' if driven.completed else 'not yet completed'}"


# --- inspect -------------------------------------------------------------------------------


async def _inspect_partition(config: ClusterConfig, pid: int, limit: int) -> dict[str, object]:
    cluster_map = config.cluster_map
    if not 0 <= pid < cluster_map.partitions.partition_count:
        raise ValidationError(
            "partition", f"must be 0..{cluster_map.partitions.partition_count - 1}"
        )
    pool = RpcPool(config.secret())
    try:
        address = cluster_map.address_of(cluster_map.owner_of(PartitionId(pid)))
        body = await pool.client(address).call(
            "inspect", {"partition": pid, "limit": limit}, RPC_TIMEOUT_MS
        )
    finally:
        await pool.close()
    if not isinstance(body, dict):
        raise ProtocolViolation("inspect: the node's answer is not an object")
    return body


def _inspect(args: argparse.Namespace, out: Output) -> int:
    if not 1 <= args.limit <= INSPECT_ROWS_MAX:
        raise ValidationError("limit", f"must be 1..{INSPECT_ROWS_MAX}")
    page = asyncio.run(_inspect_partition(_config(args), args.partition, args.limit))
    if out.json_mode:
        out.json(page)
        return EXIT_OK
    out.line(
        f"partition {page['partition']} on {page['node']}: {page['items']} items, "
        f"{page['intents']} pending intents"
    )
    intents = page.get("oldest_intents")
    if isinstance(intents, list) and intents:
        out.table(
            ["key", "txn", "anchor", "age ms"],
            ([i["key"], i["txn_id"], i["anchor"], i["age_ms"]] for i in intents),
            title="oldest intents",
            right=["anchor", "age ms"],
        )
    records = page.get("open_ledger_records")
    if isinstance(records, list) and records:
        out.table(
            ["txn", "state", "participants", "age ms", "past deadline"],
            (
                [
                    r["txn_id"],
                    r["state"],
                    ",".join(str(p) for p in r["participants"]),
                    r["age_ms"],
                    "yes" if r["past_deadline"] else "no",
                ]
                for r in records
            ),
            title="open ledger records",
            right=["age ms"],
        )
    return EXIT_OK


# --- parsers -------------------------------------------------------------------------------


def _config_option() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--config", metavar="FILE", help="a cluster file (default: the local cluster's, see --dir)"
    )
    return options


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``kvctl token``, ``kvctl recover`` and ``kvctl inspect`` to ``commands``."""
    parents = [common, _config_option()]

    token = commands.add_parser("token", help="create, revoke and list API tokens")
    actions = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = actions.add_parser("create", parents=parents, help="create a token and print it")
    create.add_argument("name")
    create.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default="read-write",
        help="what it may call (default read-write): metrics < read-only < read-write < admin; "
        "see docs/api.md",
    )
    create.set_defaults(handler=_token_create)
    revoke = actions.add_parser("revoke", parents=parents, help="revoke a token by name")
    revoke.add_argument("name")
    revoke.set_defaults(handler=_token_revoke)
    listing = actions.add_parser("list", parents=parents, help="list tokens (never their values)")
    listing.set_defaults(handler=_token_list)

    recover = commands.add_parser(
        "recover",
        parents=parents,
        help="show stuck transactions and drive them to completion",
    )
    recover.add_argument(
        "--older-than-ms", type=int, help="only older than this (default: the stale-intent time)"
    )
    recover.add_argument("--dry-run", action="store_true", help="only list them")
    recover.set_defaults(handler=_recover)

    inspect = commands.add_parser(
        "inspect", parents=parents, help="a partition's counts, intents and ledger records"
    )
    inspect.add_argument("partition", type=int)
    inspect.add_argument("--limit", type=int, default=20, help="rows of each list (default 20)")
    inspect.set_defaults(handler=_inspect)
