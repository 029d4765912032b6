"""Elle's list-append checker: non-cycle anomalies plus the inferred dependency graph.

Theory of operation
-------------------
Transactions append unique values to lists and read whole lists, so a read ``[1, 2, 3]`` of key
``k`` reveals k's version history ``[] < [1] < [1, 2] < [1, 2, 3]`` (traceability) and each element
names the one transaction that appended it (recoverability). We

1. decide which transactions may have committed: ``ok`` ones, and ``info`` ones whose append some
   trusted read observed (a fixpoint, since an ``info`` transaction's own reads then count too).
   Reads of other ``info`` transactions prove nothing and are ignored; ``fail`` ones never commit;
2. run the non-cycle checks of elle/list_append.clj: internal, future-read, G1a (aborted read),
   G1b (intermediate read), duplicate-elements, garbage-read (an element nobody appended),
   incompatible-order (reads that are not prefixes of each other), dirty-update and lost-update;
3. take each key's version order from its longest trusted read and infer edges between possible
   (``ok``/``info``) transactions: ``wr`` from the appender of a read's last element to the reader,
   ``ww`` from the appender of the previous element to each appender, ``rw`` from each reader of
   the previous state to each appender. An append no read observed goes after the last observed
   element, since any read that includes it must also include everything observed;
4. add process and real-time edges and hand the graph to :mod:`chaos.checkers.cycles`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from chaos.checkers.cycles import cycle_anomalies
from chaos.checkers.graph import DepGraph, add_process_edges, add_realtime_edges
from chaos.checkers.result import Anomaly, CheckResult, make_result
from chaos.checkers.txn import Txn, describe, show_list, transactions
from chaos.history import History

__all__ = ["check", "trusted_txns", "version_orders", "build_graph", "non_cycle_anomalies"]

_INIT: Any = object()  # the empty list: no last element


def _appends(t: Txn) -> list[tuple[Any, Any]]:
    return [(k, v) for f, k, v in t.mops if f == "append"]


def _reads(t: Txn) -> list[tuple[Any, tuple[Any, ...]]]:
    return [(k, v) for f, k, v in t.mops if f == "r" and v is not None]


def trusted_txns(txns: Iterable[Txn]) -> list[Txn]:
    """``ok`` transactions plus ``info`` ones proven committed by an observed append."""
    txns = list(txns)
    trusted = [t for t in txns if t.type == "ok"]
    pending = [t for t in txns if t.type == "info"]
    observed: dict[Any, set[Any]] = defaultdict(set)
    fresh = trusted
    while fresh:
        for t in fresh:
            for k, vs in _reads(t):
                observed[k].update(vs)
        fresh = [t for t in pending if any(v in observed[k] for k, v in _appends(t))]
        trusted += fresh
        pending = [t for t in pending if t not in fresh]
    return trusted


def version_orders(readers: Iterable[Txn]) -> dict[Any, list[Any]]:
    """Per key, the distinct elements of its longest read."""
    longest: dict[Any, tuple[Any, ...]] = {}
    for t in readers:
        for k, vs in _reads(t):
            if len(vs) > len(longest.get(k, ())):
                longest[k] = vs
    return {k: list(dict.fromkeys(vs)) for k, vs in longest.items()}


def _internal(t: Txn) -> list[Anomaly]:
    """A read must show the transaction's own earlier appends (and repeat its earlier reads)."""
    out = []
    known: dict[Any, tuple[Any, ...]] = {}  # the exact list, when known
    suffix: dict[Any, list[Any]] = {}  # own appends on top of an unknown prefix
    for f, k, v in t.mops:
        if f == "append":
            if k in known:
                known[k] = (*known[k], v)
            else:
                suffix.setdefault(k, []).append(v)
        elif f == "r" and v is not None:
            if k in known:
                ok = v == known[k]
                expected = show_list(known[k])
            else:
                tail = suffix.get(k, [])
                ok = list(v[len(v) - len(tail) :]) == tail if len(v) >= len(tail) else False
                expected = f"a list ending in {show_list(tail)}"
            if not ok:
                out.append(
                    Anomaly(
                        "internal",
                        f"{t} read key {k!r} = {show_list(v)} but expected {expected} "
                        f"from its own earlier micro-ops: {describe(t.op.value)}",
                        (t.op,),
                    )
                )
            known[k] = v
            suffix.pop(k, None)
    return out


def _future_reads(t: Txn) -> list[Anomaly]:
    out = []
    for i, (f, k, vs) in enumerate(t.mops):
        if f != "r" or vs is None:
            continue
        later = {v for g, k2, v in t.mops[i + 1 :] if g == "append" and k2 == k}
        for v in later.intersection(vs):
            out.append(
                Anomaly(
                    "future-read",
                    f"{t} read key {k!r} = {show_list(vs)}, including {v!r} which it appends later",
                    (t.op,),
                )
            )
    return out


def _lost_updates(ok: list[Txn]) -> list[Anomaly]:
    groups: dict[tuple[Any, tuple[Any, ...]], list[Txn]] = defaultdict(list)
    for t in ok:
        first_read: dict[Any, tuple[Any, ...] | None] = {}
        written: set[Any] = set()
        for f, k, v in t.mops:
            if f == "r" and k not in written and k not in first_read:
                first_read[k] = v
            elif f == "append" and k not in written:
                written.add(k)
                before = first_read.get(k)
                if before is not None:
                    groups[(k, before)].append(t)
    out = []
    for (k, vs), ts in groups.items():
        if len(ts) >= 2:
            names = ", ".join(map(str, ts))
            out.append(
                Anomaly(
                    "lost-update",
                    f"{names} all read key {k!r} = {show_list(vs)} and then appended to it: "
                    "at most one of them can have seen that state",
                    tuple(t.op for t in ts),
                )
            )
    return out


def non_cycle_anomalies(txns: list[Txn], trusted: list[Txn]) -> list[Anomaly]:
    """Every anomaly of steps 1-2 of the theory of operation."""
    ok = [t for t in txns if t.type == "ok"]
    out = [a for t in ok for a in (*_internal(t), *_future_reads(t))]
    writer: dict[tuple[Any, Any], Txn] = {}
    intermediate: set[tuple[Any, Any]] = set()
    for t in txns:
        last: dict[Any, Any] = {}
        for k, v in _appends(t):
            writer[(k, v)] = t
            if k in last:
                intermediate.add((k, last[k]))
            last[k] = v
    committed: dict[Any, set[Any]] = defaultdict(set)  # appended by ok/info, per key
    for (k, v), appender in writer.items():
        if appender.type != "fail":
            committed[k].add(v)
    by_key: dict[Any, set[tuple[Any, ...]]] = defaultdict(set)
    for t in trusted:
        for k, vs in _reads(t):
            elements = set(vs)
            if len(vs) != len(elements):
                out.append(Anomaly("duplicate-elements", f"{t} read key {k!r} = {vs!r}", (t.op,)))
            if elements <= committed[k]:
                elements = set()  # the fast path: nothing aborted or unknown
            for v in (v for v in vs if v in elements):
                w = writer.get((k, v))
                if w is None:
                    out.append(
                        Anomaly(
                            "garbage-read",
                            f"{t} read key {k!r} = {show_list(vs)}: nobody appended {v!r}",
                            (t.op,),
                        )
                    )
                elif w.type == "fail":
                    out.append(
                        Anomaly(
                            "G1a",
                            f"{t} read key {k!r} = {show_list(vs)}, including {v!r} "
                            f"appended by failed {w}",
                            (t.op, w.op),
                        )
                    )
            if vs and (k, vs[-1]) in intermediate and writer[(k, vs[-1])] is not t:
                w = writer[(k, vs[-1])]
                out.append(
                    Anomaly(
                        "G1b",
                        f"{t} read key {k!r} = {show_list(vs)}, ending in {vs[-1]!r}, an "
                        f"intermediate append of {w} which appended to {k!r} again later",
                        (t.op, w.op),
                    )
                )
            if vs:
                by_key[k].add(vs)
    for k, reads in by_key.items():
        ordered = sorted(reads, key=len)
        for a, b in itertools.pairwise(ordered):
            if b[: len(a)] != a:
                out.append(
                    Anomaly(
                        "incompatible-order",
                        f"key {k!r} was read as {show_list(a, 8)} and as {show_list(b, 8)}; "
                        "neither is a prefix of the other",
                    )
                )
    for k, order in version_orders(trusted).items():
        prev_type, prev_w = "ok", None
        for v in order:
            w = writer.get((k, v))
            if w is None or w.type == "info":
                continue
            if prev_type == "fail" and w.type == "ok" and prev_w is not None:
                out.append(
                    Anomaly(
                        "dirty-update",
                        f"key {k!r}: committed {w} appended {v!r} on top of failed {prev_w}'s "
                        "append",
                        (prev_w.op, w.op),
                    )
                )
            prev_type, prev_w = w.type, w
    return out + _lost_updates(ok)


def build_graph(txns: list[Txn], trusted: list[Txn]) -> DepGraph:
    """The ww/wr/rw graph over possible (``ok``/``info``) transactions."""
    graph = DepGraph()
    possible = [t for t in txns if t.type != "fail"]
    for t in possible:
        graph.add_node(t.op)
    order = version_orders(trusted)
    position = {(k, v): i for k, vs in order.items() for i, v in enumerate(vs)}
    writer = {(k, v): t for t in possible for k, v in _appends(t)}
    readers: dict[tuple[Any, Any], list[Txn]] = defaultdict(list)
    for t in trusted:
        for k, vs in _reads(t):
            readers[(k, vs[-1] if vs else _INIT)].append(t)
            w = writer.get((k, vs[-1])) if vs else None
            if w is not None:
                why = f"{{b}} observed {{a}}'s append of {vs[-1]!r} to key {k!r}"
                graph.add_edge(w.op, t.op, "wr", why)
    for t in possible:
        for k, v in _appends(t):
            known = order.get(k, [])
            i = position.get((k, v), len(known))
            prev = known[i - 1] if i > 0 else _INIT
            w = writer.get((k, prev)) if prev is not _INIT else None
            if w is not None:
                why = f"{{b}} appended {v!r} to key {k!r} after {{a}} appended {prev!r}"
                graph.add_edge(w.op, t.op, "ww", why)
            seen = "[]" if prev is _INIT else f"a list ending in {prev!r}"
            for r in readers.get((k, prev), []):
                why = f"{{a}} read key {k!r} as {seen}, missing {{b}}'s append of {v!r}"
                graph.add_edge(r.op, t.op, "rw", why)
    return graph


def check(
    history: History,
    model: str = "serializable",
    *,
    f: str = "txn",
    timeout_s: float = 1.0,
) -> CheckResult:
    """Check a list-append history; ``valid`` refers to ``model``, verdicts cover all models."""
    txns = list(transactions(history, f))
    seen: dict[tuple[Any, Any], Txn] = {}
    for t in txns:
        for k, v in _appends(t):
            if (k, v) in seen:
                raise ValueError(f"duplicate append of {v!r} to {k!r} ({seen[(k, v)]} and {t})")
            seen[(k, v)] = t
    trusted = trusted_txns(txns)
    anomalies = non_cycle_anomalies(txns, trusted)
    graph = build_graph(txns, trusted)
    pairs = [(t.invoke, t.op) for t in txns]
    add_process_edges(graph, pairs)
    add_realtime_edges(graph, pairs)
    cycles, notes = cycle_anomalies(graph, timeout_s=timeout_s, describe=describe)
    return make_result("list-append", anomalies + cycles, model, notes)
