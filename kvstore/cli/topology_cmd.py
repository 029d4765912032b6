"""``kvctl partition move`` and ``kvctl node add|remove``: a replicated local cluster's shape,
changed online.

Theory of operation
-------------------
Thin commands over :class:`kvstore.localcluster.LocalCluster` (``move_partition``, ``add_node``,
``remove_node``), which run :class:`kvstore.replication.operator.MoveOperator` against the
cluster's etcd and nodes; docs/replication.md ("Moving replicas, adding and removing nodes")
says what each step does and why it is safe. Only a replicated cluster (``kvctl cluster up
--replication-factor N``) has a live map to change: for another, every command is a usage error
(exit 2).

* ``partition move P --to NODE [--from NODE]``: a learner on NODE, caught up, promoted, then a
  replica removed (``--from``, else a follower the operator chooses); one line per step as it
  happens, then the partition's replicas and leader. Transactions on the partition keep
  committing meanwhile; removing the leader costs one election (2-3 s of retryable refusals).
* ``node add``: a new node ``n<k>`` on a free loopback port, written into ``cluster.toml`` and
  started; it holds nothing until a move gives it replicas. Running nodes learn its address from
  its liveness key in etcd, so nothing else restarts.
* ``node remove NODE``: every replica NODE holds is moved, one partition after the other, to
  the live node that holds the fewest; then NODE is stopped and taken out of ``cluster.toml``
  (its data directory and log stay). A node that is down can be removed too, as long as each of
  its partitions still has a leader.

A wait that runs out is ``Unavailable`` (exit 6) naming the partition and the step; the map is
left as it is and the same command resumes the move. A partition in another move's middle, or
one another kvctl is moving, is ``ConditionFailed`` (exit 4).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kvstore.cli.output import EXIT_OK, Output
from kvstore.localcluster import LocalCluster, resolve_dir
from kvstore.replication.operator import MoveReport

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands

__all__ = ["register"]

_SAFETY = (
    "Each step is one compare-and-set of the live map in etcd, and each change of the voting "
    "set waits until the partition's leader has committed the one before (docs/replication.md, "
    "rule 11). If a wait runs out (exit 6) the map is left as it is: run the same command again "
    "to resume."
)


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``kvctl partition ...`` and ``kvctl node ...`` to ``commands``."""
    partition = commands.add_parser(
        "partition",
        help="move a partition's replicas (replicated clusters)",
        description="Change where a partition's replicas live, online, in a replicated local "
        "cluster (kvctl cluster up --replication-factor N). How and why it is safe: "
        "docs/replication.md, 'Moving replicas, adding and removing nodes'.",
    )
    actions = partition.add_subparsers(dest="partition_command", metavar="COMMAND", required=True)
    move = actions.add_parser(
        "move",
        parents=[common],
        help="move one replica of a partition to another node, online",
        description="Move one replica of partition P to node --to: NODE becomes a learner (a "
        "snapshot, then every batch; it counts in no majority), is promoted into the voting set "
        "once it has caught up with the leader, and then a replica is removed: --from, else a "
        "follower (a replica on a node that is down first; then the node holding the most "
        "replicas). Removing the leader makes the others elect one (2-3 s of retryable "
        "refusals on that partition). Transactions keep committing throughout. " + _SAFETY,
    )
    move.add_argument("partition", type=int, metavar="P", help="the partition id")
    move.add_argument("--to", required=True, metavar="NODE", help="the node that gets a replica")
    move.add_argument(
        "--from",
        dest="from_node",
        metavar="NODE",
        help="the replica that leaves (default: chosen as described above)",
    )
    move.set_defaults(handler=_move)

    node = commands.add_parser(
        "node",
        help="add or remove a node (replicated clusters)",
        description="Add a node to, or remove one from, a replicated local cluster, online "
        "(docs/replication.md, 'Moving replicas, adding and removing nodes').",
    )
    node_actions = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    add = node_actions.add_parser(
        "add",
        parents=[common],
        help="make and start a new node (it holds nothing until moves give it replicas)",
        description="Make a new node n<k> (the next free id) on a free 127.0.0.1 port, add it "
        "to cluster.toml and start it; wait until it is healthy and live in etcd. Running "
        "nodes learn its address from its liveness key, so nothing restarts. It holds no "
        "replica until `kvctl partition move P --to n<k>` gives it one.",
    )
    add.set_defaults(handler=_add)
    remove = node_actions.add_parser(
        "remove",
        parents=[common],
        help="move every replica off a node, then stop it and take it out of cluster.toml",
        description="Move every replica NODE holds, one partition after the other, to the live "
        "node holding the fewest replicas (each as `kvctl partition move` does), then stop NODE "
        "and take it out of cluster.toml; its data directory and log stay. At least as many "
        "nodes as the replication factor must remain. A node that is down can be removed while "
        "each of its partitions still has a leader. " + _SAFETY,
    )
    remove.add_argument("node", metavar="NODE", help="the node id, e.g. n2")
    remove.set_defaults(handler=_remove)


def _move(args: argparse.Namespace, out: Output) -> int:
    cluster = LocalCluster.open(resolve_dir(args.dir))
    report = cluster.move_partition(
        args.partition, args.to, args.from_node, note=None if out.json_mode else out.line
    )
    if out.json_mode:
        out.json(report.to_json())
    else:
        out.line(_summary(report))
    return EXIT_OK


def _summary(report: MoveReport) -> str:
    if not report.changed:
        return (
            f"partition {report.partition}: nothing to do (replicas {' '.join(report.replicas)}, "
            f"leader {report.leader})"
        )
    return (
        f"partition {report.partition}: moved from {report.from_node} to {report.to_node} in "
        f"{report.elapsed_s:.1f} s; replicas {' '.join(report.replicas)}, leader {report.leader}"
    )


def _add(args: argparse.Namespace, out: Output) -> int:
    cluster = LocalCluster.open(resolve_dir(args.dir))
    with out.spinner("starting a new node and waiting until it is healthy"):
        added = cluster.add_node()
    if out.json_mode:
        out.json(added.to_json())
        return EXIT_OK
    out.line(
        f"added {added.node} at http://{added.address} (pid {added.pid}); it holds nothing yet"
    )
    dir_arg = "" if args.dir is None else f" --dir {args.dir}"
    out.line(f"give it replicas: kvctl partition move P --to {added.node}{dir_arg}")
    return EXIT_OK


def _remove(args: argparse.Namespace, out: Output) -> int:
    cluster = LocalCluster.open(resolve_dir(args.dir))
    removed = cluster.remove_node(args.node, note=None if out.json_mode else out.line)
    if out.json_mode:
        out.json(removed.to_json())
        return EXIT_OK
    for move in removed.moves:
        out.line(_summary(move))
    how = {
        None: "was not running",
        "terminated": "stopped",
        "killed": "killed (no answer to SIGTERM)",
    }
    out.line(
        f"{removed.node} holds no replica any more; {how[removed.stopped]}; removed from "
        f"{cluster.config_path} (its data and log stay)"
    )
    return EXIT_OK
