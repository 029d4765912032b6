"""Elle's rw-register checker: registers with unique writes, version graphs and cycle search.

Theory of operation
-------------------
Micro-ops are ``[w k v]`` (``v`` unique per key, never ``None``) and ``[r k v]`` (``None`` is the
initial state). Only *external* effects matter: a transaction's first read of k before it writes
k, and its last write of k. Unique values make writes recoverable: a read of ``v`` names its writer,
which gives ``wr`` edges. Registers are not traceable, so the version order of each key is
assembled from sources (elle/rw_register.clj), each added only if it keeps the key's version graph
acyclic (otherwise it is dropped and ``cyclic-versions`` is reported):

* initial: ``None`` precedes every written value;
* write-follows-read: an ``ok`` transaction that read ``v1`` and then wrote ``v2`` orders
  ``v1 < v2``;
* commit timestamps (``use_ts``): writes of transactions carrying ``ts`` are ordered by ts, which
  gives a total order per key. This checks the history against the store's own claimed order, so
  a ts-order inconsistency surfaces as a cycle even where some other serial order might exist.

Each version edge ``v1 < v2`` yields ``ww`` from writer(v1) to writer(v2) and ``rw`` from every
reader of v1 to writer(v2). Non-cycle checks: internal (reads must repeat earlier reads and
return the transaction's own writes), future-read, G1a, G1b, garbage-read and lost-update.
Reads of ``info`` transactions are ignored (their ``None`` may mean "unknown"); their writes
still get edges.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import networkx as nx

from chaos.checkers.cycles import cycle_anomalies
from chaos.checkers.graph import DepGraph, add_process_edges, add_realtime_edges
from chaos.checkers.result import Anomaly, CheckResult, make_result
from chaos.checkers.txn import Txn, describe, transactions
from chaos.history import History

__all__ = ["check", "external_reads", "external_writes", "version_graphs"]


def external_reads(t: Txn) -> dict[Any, Any]:
    """``{key: value}`` of each first read before any write of that key."""
    out: dict[Any, Any] = {}
    written: set[Any] = set()
    for f, k, v in t.mops:
        if f == "w":
            written.add(k)
        elif f == "r" and k not in written and k not in out:
            out[k] = v
    return out


def external_writes(t: Txn) -> dict[Any, Any]:
    """``{key: value}`` of each last write."""
    return {k: v for f, k, v in t.mops if f == "w"}


class _Initial:
    """The initial state of every register (networkx nodes cannot be ``None``)."""

    def __repr__(self) -> str:
        return "the initial value"


INITIAL: Any = _Initial()


def _version(v: Any) -> Any:
    return INITIAL if v is None else v


def _show(v: Any) -> str:
    return repr(_version(v))


def _internal(t: Txn) -> list[Anomaly]:
    out = []
    state: dict[Any, Any] = {}
    for f, k, v in t.mops:
        if f == "w":
            state[k] = v
        elif f == "r":
            if k in state and state[k] != v:
                out.append(
                    Anomaly(
                        "internal",
                        f"{t} read key {k!r} = {v!r} but its own earlier micro-ops imply "
                        f"{state[k]!r}: {describe(t.op.value)}",
                        (t.op,),
                    )
                )
            state[k] = v
    return out


def _non_cycle(txns: list[Txn], ok: list[Txn]) -> list[Anomaly]:
    out = [a for t in ok for a in _internal(t)]
    writer: dict[tuple[Any, Any], Txn] = {}
    intermediate: set[tuple[Any, Any]] = set()
    for t in txns:
        final = external_writes(t)
        for f, k, v in t.mops:
            if f != "w":
                continue
            if v is None or ((k, v) in writer and writer[(k, v)] is not t):
                raise ValueError(f"writes must be unique and non-None: {t} writes {v!r} to {k!r}")
            writer[(k, v)] = t
            if final[k] != v:
                intermediate.add((k, v))
    lost: dict[tuple[Any, Any], list[Txn]] = defaultdict(list)
    for t in ok:
        writes = external_writes(t)
        for k, v in external_reads(t).items():
            if k in writes:
                lost[(k, v)].append(t)
            if v is None:
                continue
            w = writer.get((k, v))
            if w is None:
                out.append(Anomaly("garbage-read", f"{t} read {k!r} = {v!r}: nobody wrote it"))
            elif w is t:
                out.append(
                    Anomaly("future-read", f"{t} read {k!r} = {v!r} before writing it", (t.op,))
                )
            elif w.type == "fail":
                out.append(
                    Anomaly("G1a", f"{t} read {k!r} = {v!r}, written by failed {w}", (t.op, w.op))
                )
            elif (k, v) in intermediate:
                out.append(
                    Anomaly(
                        "G1b",
                        f"{t} read {k!r} = {v!r}, an intermediate write of {w}",
                        (t.op, w.op),
                    )
                )
    for (k, v), ts in lost.items():
        if len(ts) >= 2:
            names = ", ".join(map(str, ts))
            out.append(
                Anomaly(
                    "lost-update",
                    f"{names} all read {k!r} = {_show(v)} and then wrote {k!r}",
                    tuple(t.op for t in ts),
                )
            )
    return out


def version_graphs(
    possible: list[Txn], ok: list[Txn], use_ts: bool = True
) -> tuple[dict[Any, nx.DiGraph], list[Anomaly]]:
    """Per-key version graphs from the initial, write-follows-read and ts sources."""
    sources: dict[str, dict[Any, list[tuple[Any, Any]]]] = {
        "initial": defaultdict(list),
        "write-follows-read": defaultdict(list),
        "commit-ts": defaultdict(list),
    }
    for t in possible:
        for k, v in external_writes(t).items():
            sources["initial"][k].append((INITIAL, v))
    for t in ok:
        writes = external_writes(t)
        for k, v in external_reads(t).items():
            if k in writes and writes[k] != v:
                sources["write-follows-read"][k].append((_version(v), writes[k]))
    if use_ts:
        by_key: dict[Any, list[tuple[tuple[int, ...], Any]]] = defaultdict(list)
        for t in possible:
            if t.op.ts is not None:
                for k, v in external_writes(t).items():
                    by_key[k].append((t.op.ts, v))
        for k, vs in by_key.items():
            ordered = [v for _, v in sorted(vs, key=lambda p: p[0])]
            sources["commit-ts"][k] = list(itertools.pairwise(ordered))
    graphs: dict[Any, nx.DiGraph] = defaultdict(nx.DiGraph)
    anomalies = []
    for name, per_key in sources.items():
        for k, edges in per_key.items():
            trial = nx.DiGraph(graphs[k])
            trial.add_edges_from(edges)
            if nx.is_directed_acyclic_graph(trial):
                graphs[k] = trial
            else:
                cyc = nx.find_cycle(trial)
                anomalies.append(
                    Anomaly(
                        "cyclic-versions",
                        f"key {k!r}: the {name} order makes versions cyclic: "
                        + " < ".join(_show(a) for a, _ in cyc),
                    )
                )
    return dict(graphs), anomalies


def check(
    history: History,
    model: str = "serializable",
    *,
    f: str = "txn",
    use_ts: bool = True,
    timeout_s: float = 1.0,
) -> CheckResult:
    """Check an rw-register history; ``valid`` refers to ``model``."""
    txns = list(transactions(history, f))
    ok = [t for t in txns if t.type == "ok"]
    possible = [t for t in txns if t.type != "fail"]
    anomalies = _non_cycle(txns, ok)
    versions, cyclic = version_graphs(possible, ok, use_ts)
    graph = DepGraph()
    for t in possible:
        graph.add_node(t.op)
    writer = {(k, v): t for t in possible for k, v in external_writes(t).items()}
    readers: dict[tuple[Any, Any], list[Txn]] = defaultdict(list)
    for t in ok:
        for k, v in external_reads(t).items():
            readers[(k, _version(v))].append(t)
            w = writer.get((k, v))
            if w is not None:
                graph.add_edge(w.op, t.op, "wr", f"{{b}} read {k!r} = {v!r}, written by {{a}}")
    for k, vg in versions.items():
        for v1, v2 in vg.edges:
            w2 = writer.get((k, v2))
            if w2 is None:
                continue
            w1 = writer.get((k, v1))
            if w1 is not None:
                why = f"{{a}} wrote {k!r} = {v1!r} and {{b}} wrote a later version {v2!r}"
                graph.add_edge(w1.op, w2.op, "ww", why)
            for r in readers.get((k, v1), []):
                why = f"{{a}} read {k!r} = {_show(v1)} and {{b}} wrote a later version {v2!r}"
                graph.add_edge(r.op, w2.op, "rw", why)
    pairs = [(t.invoke, t.op) for t in txns]
    add_process_edges(graph, pairs)
    add_realtime_edges(graph, pairs)
    cycles, notes = cycle_anomalies(graph, timeout_s=timeout_s, describe=describe)
    return make_result("rw-register", anomalies + cyclic + cycles, model, notes)
