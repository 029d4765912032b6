"""Elle's rw-register checker: registers with unique writes, version graphs and cycle search.

Theory of operation
-------------------
Micro-ops are ``[w k v]`` and ``[r k v]``. ``[w k None]`` deletes ``k``, and a read of an absent
key returns ``None`` (the initial state is "absent" too). Non-``None`` written values are unique per
key; deletes may repeat. Only *external* effects matter: a transaction's first read of k before it
writes k, and its last write of k.

Versions. Each key's versions are the initial state (:data:`INITIAL`), every non-``None`` value
written to it, and one private :class:`_Deleted` version per transaction whose last write of the
key is a delete (a delete is a write like any other, just not recoverable from reads). Unique
values make writes recoverable: a read of ``v`` names its writer, which gives ``wr`` edges.

Reads of ``None``. If no possibly committed (``ok`` or ``info``) transaction's last write of k is
a delete, a read of ``None`` can only have observed the initial state and is treated as a read of
:data:`INITIAL`, exactly as without deletes. Otherwise it could have observed the initial state or
any of those deletes, so it is *ambiguous*: it still takes part in the internal check, but gives
no ``wr`` edge, no write-follows-read version edge and no lost-update group. Deletes by ``fail``
transactions and intermediate deletes are never legitimately visible, so they do not make ``None``
ambiguous (a read of ``None`` that only they could explain is caught as a stale read of the
initial state).

Registers are not traceable, so the version order of each key is assembled from sources
(elle/rw_register.clj), each added only if it keeps the key's version graph acyclic (otherwise it
is dropped and ``cyclic-versions`` is reported):

* initial: the initial state precedes every written version (deletes included);
* write-follows-read: an ``ok`` transaction that read ``v1`` (unambiguously) and then wrote or
  deleted the key orders ``v1`` before its own version;
* commit timestamps (``use_ts``): versions written by transactions carrying ``ts`` (deletes
  included) are ordered by ts, which gives a total order per key. This checks the history against
  the store's own claimed order, so a ts-order inconsistency surfaces as a cycle even where some
  other serial order might exist.

Each version edge ``v1 < v2`` yields ``ww`` from writer(v1) to writer(v2) and ``rw`` from every
(unambiguous) reader of v1 to writer(v2). An ambiguous reader saw *some* candidate (the initial
state or a delete), so it gets ``rw`` edges to the writers of the earliest versions that every
candidate precedes in the version graph (with the ts source, the first value written after the
last delete): whichever candidate it saw, that version overwrote it. Non-cycle checks: internal
(reads must repeat earlier reads and return the transaction's own writes, ``None`` after its own
delete), future-read, G1a, G1b, garbage-read and lost-update. Reads of ``info`` transactions are
ignored (their ``None`` may mean "unknown"); their writes still get edges.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx

from chaos.checkers.cycles import cycle_anomalies
from chaos.checkers.graph import DepGraph, add_process_edges, add_realtime_edges
from chaos.checkers.result import Anomaly, CheckResult, make_result
from chaos.checkers.txn import Txn, describe, transactions
from chaos.history import History

__all__ = ["check", "deleted_keys", "external_reads", "external_writes", "version_graphs"]


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
    """``{key: value}`` of each last write (``None`` for a delete)."""
    return {k: v for f, k, v in t.mops if f == "w"}


class _Initial:
    """The initial state of every register (networkx nodes cannot be ``None``)."""

    def __repr__(self) -> str:
        return "the initial value"


INITIAL: Any = _Initial()


@dataclass(frozen=True)
class _Deleted:
    """The version installed by the delete of transaction ``index`` (its completion's index)."""

    index: int

    def __repr__(self) -> str:
        return f"the delete by op {self.index}"


# A read whose version cannot be told apart: ``None`` on a key that some transaction deleted.
_AMBIGUOUS: Any = object()


def deleted_keys(possible: Iterable[Txn]) -> set[Any]:
    """Keys whose ``None`` reads are ambiguous: some transaction's last write of them deletes."""
    return {k for t in possible for k, v in external_writes(t).items() if v is None}


def _written(t: Txn) -> dict[Any, Any]:
    """``{key: version}`` of ``t``'s external writes, deletes as :class:`_Deleted`."""
    return {k: _Deleted(t.index) if v is None else v for k, v in external_writes(t).items()}


def _read_version(k: Any, v: Any, deleted: set[Any]) -> Any:
    """The version a read of ``v`` observed, or :data:`_AMBIGUOUS`."""
    if v is not None:
        return v
    return _AMBIGUOUS if k in deleted else INITIAL


def _after_every_candidate(vg: nx.DiGraph, candidates: set[Any]) -> list[Any]:
    """The minimal versions of ``vg`` that every candidate precedes (none of them a candidate)."""
    bit = {c: 1 << i for i, c in enumerate(candidates)}
    everything = (1 << len(bit)) - 1
    reach: dict[Any, int] = {}  # which candidates precede (or are) each version, as a bit set
    for n in nx.topological_sort(vg):
        r = bit.get(n, 0)
        for p in vg.predecessors(n):
            r |= reach[p]
        reach[n] = r
    after = [n for n, r in reach.items() if r == everything and n not in bit]  # topological
    later = set(after)
    return [n for n in after if not any(p in later for p in vg.predecessors(n))]


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


def _non_cycle(txns: list[Txn], ok: list[Txn], deleted: set[Any]) -> list[Anomaly]:
    out = [a for t in ok for a in _internal(t)]
    writer: dict[tuple[Any, Any], Txn] = {}
    intermediate: set[tuple[Any, Any]] = set()
    for t in txns:
        final = external_writes(t)
        for f, k, v in t.mops:
            if f != "w" or v is None:
                continue
            if (k, v) in writer and writer[(k, v)] is not t:
                raise ValueError(f"writes must be unique unless None: {t} writes {v!r} to {k!r}")
            writer[(k, v)] = t
            if final[k] != v:
                intermediate.add((k, v))
    lost: dict[tuple[Any, Any], list[Txn]] = defaultdict(list)
    for t in ok:
        writes = external_writes(t)
        for k, v in external_reads(t).items():
            version = _read_version(k, v, deleted)
            if k in writes and version is not _AMBIGUOUS:
                lost[(k, version)].append(t)
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
    for (k, version), ts in lost.items():
        if len(ts) >= 2:
            names = ", ".join(map(str, ts))
            out.append(
                Anomaly(
                    "lost-update",
                    f"{names} all read {k!r} = {version!r} and then wrote {k!r}",
                    tuple(t.op for t in ts),
                )
            )
    return out


def version_graphs(
    possible: list[Txn], ok: list[Txn], use_ts: bool = True
) -> tuple[dict[Any, nx.DiGraph], list[Anomaly]]:
    """Per-key version graphs from the initial, write-follows-read and ts sources."""
    deleted = deleted_keys(possible)
    sources: dict[str, dict[Any, list[tuple[Any, Any]]]] = {
        "initial": defaultdict(list),
        "write-follows-read": defaultdict(list),
        "commit-ts": defaultdict(list),
    }
    for t in possible:
        for k, version in _written(t).items():
            sources["initial"][k].append((INITIAL, version))
    for t in ok:
        writes = _written(t)
        for k, v in external_reads(t).items():
            read = _read_version(k, v, deleted)
            if k in writes and read is not _AMBIGUOUS and writes[k] != read:
                sources["write-follows-read"][k].append((read, writes[k]))
    if use_ts:
        by_key: dict[Any, list[tuple[tuple[int, ...], Any]]] = defaultdict(list)
        for t in possible:
            if t.op.ts is not None:
                for k, version in _written(t).items():
                    by_key[k].append((t.op.ts, version))
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
                        + " < ".join(repr(a) for a, _ in cyc),
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
    deleted = deleted_keys(possible)
    anomalies = _non_cycle(txns, ok, deleted)
    versions, cyclic = version_graphs(possible, ok, use_ts)
    graph = DepGraph()
    for t in possible:
        graph.add_node(t.op)
    writer = {(k, v): t for t in possible for k, v in _written(t).items()}
    readers: dict[tuple[Any, Any], list[Txn]] = defaultdict(list)
    ambiguous: dict[Any, list[Txn]] = defaultdict(list)
    for t in ok:
        for k, v in external_reads(t).items():
            version = _read_version(k, v, deleted)
            if version is _AMBIGUOUS:
                ambiguous[k].append(t)
                continue
            readers[(k, version)].append(t)
            w = writer.get((k, version))
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
                why = f"{{a}} read {k!r} = {v1!r} and {{b}} wrote a later version {v2!r}"
                graph.add_edge(r.op, w2.op, "rw", why)
    candidates: dict[Any, set[Any]] = defaultdict(lambda: {INITIAL})
    for key, version in writer:
        if isinstance(version, _Deleted):
            candidates[key].add(version)
    for k, rs in ambiguous.items():
        for v2 in _after_every_candidate(versions[k], candidates[k]):
            w2 = writer.get((k, v2))
            if w2 is None:
                continue
            why = (
                f"{{a}} read {k!r} = None, but {{b}} wrote {v2!r}, a later version than the "
                f"initial value and every delete of {k!r}"
            )
            for r in rs:
                graph.add_edge(r.op, w2.op, "rw", why)
    pairs = [(t.invoke, t.op) for t in txns]
    add_process_edges(graph, pairs)
    add_realtime_edges(graph, pairs)
    cycles, notes = cycle_anomalies(graph, timeout_s=timeout_s, describe=describe)
    return make_result("rw-register", anomalies + cyclic + cycles, model, notes)
