"""Labelled transaction dependency graphs, plus the process and real-time orders.

Theory of operation
-------------------
Nodes are transactions, identified by the ``index`` of their completion op (``ok`` or ``info``;
``fail`` transactions never appear). An edge ``a -> b`` means "a must precede b in any serial
order that explains the history" and carries a *set* of labels, each with a short explanation
template in which ``{a}`` and ``{b}`` stand for the two transactions' names:

* ``ww``, ``wr``, ``rw``: Adya's data dependencies, inferred by the workload checkers;
* ``process``: consecutive ``ok`` ops of one process, and its last ``ok`` op to its final
  ``info`` op (strong-session serializability);
* ``realtime``: ``a`` completed ``ok`` before ``b`` was invoked (strict serializability). Built as
  a transitive reduction in one pass over the history (elle/core.clj): a frontier holds the
  completed ops not yet implied by a later one; each invoke gets an edge from every frontier op,
  and an ``ok`` completion replaces, in the frontier, the ops that point at it.

Self edges are dropped: a transaction never depends on itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from chaos.history import Op

__all__ = [
    "DATA_LABELS",
    "DepGraph",
    "add_process_edges",
    "add_realtime_edges",
]

DATA_LABELS: frozenset[str] = frozenset({"ww", "wr", "rw"})


class DepGraph:
    """A directed graph over transactions whose edges carry ``{label: explanation}`` maps."""

    def __init__(self) -> None:
        self.g: nx.DiGraph = nx.DiGraph()
        self.ops: dict[int, Op] = {}

    def add_node(self, op: Op) -> None:
        """Add a transaction, keyed by its completion op."""
        self.ops[op.index] = op
        self.g.add_node(op.index)

    def add_edge(self, a: Op, b: Op, label: str, why: str) -> None:
        """Add ``label`` to the edge ``a -> b``; the first explanation per label is kept."""
        if a.index == b.index:
            return
        self.add_node(a)
        self.add_node(b)
        if self.g.has_edge(a.index, b.index):
            labels: dict[str, str] = self.g.edges[a.index, b.index]["labels"]
            labels.setdefault(label, why)
        else:
            self.g.add_edge(a.index, b.index, labels={label: why})

    def labels(self, a: int, b: int) -> dict[str, str]:
        """The ``{label: explanation}`` map of edge ``a -> b``."""
        out: dict[str, str] = self.g.edges[a, b]["labels"]
        return out

    def restrict(self, allowed: Iterable[str]) -> nx.DiGraph:
        """The subgraph of edges having at least one label in ``allowed``."""
        keep = frozenset(allowed)
        sub = nx.DiGraph()
        sub.add_nodes_from(self.g.nodes)
        sub.add_edges_from(
            (a, b) for a, b, labels in self.g.edges(data="labels") if keep.intersection(labels)
        )
        return sub

    def to_dot(self, nodes: Iterable[int] | None = None) -> str:
        """Graphviz DOT text for the subgraph on ``nodes`` (default: all), for debugging."""
        keep = set(self.g.nodes if nodes is None else nodes)
        lines = ["digraph dsg {"]
        for n in sorted(keep):
            op = self.ops[n]
            lines.append(f'  {n} [label="op {n} p{op.process} {op.type}"];')
        for a, b, labels in self.g.edges(data="labels"):
            if a in keep and b in keep:
                lines.append(f'  {a} -> {b} [label="{",".join(sorted(labels))}"];')
        return "\n".join([*lines, "}"])

    def edge_count(self, label: str) -> int:
        """How many edges carry ``label``."""
        return sum(1 for _, _, labels in self.g.edges(data="labels") if label in labels)


def add_process_edges(graph: DepGraph, pairs: Iterable[tuple[Op, Op]]) -> None:
    """Link consecutive ``ok`` transactions of each process (pairs in history order).

    A process's final ``info`` transaction is linked from its last ``ok`` one too: if it took
    effect at all, it did so after it was invoked.
    """
    last: dict[int, Op] = {}
    for _inv, done in sorted(pairs, key=lambda p: p[0].index):
        if done.type == "fail" or done.index not in graph.ops:
            continue
        prev = last.get(done.process)
        if prev is not None:
            graph.add_edge(
                prev, done, "process", f"{{a}} ran before {{b}} on process {done.process}"
            )
        last[done.process] = done


def add_realtime_edges(graph: DepGraph, pairs: Iterable[tuple[Op, Op]]) -> None:
    """Add the transitive reduction of "completed ok before invoked" between graph nodes."""
    events: list[tuple[int, bool, Op, Op]] = []
    for inv, done in pairs:
        if done.index in graph.ops:
            events.append((inv.index, True, inv, done))
            events.append((done.index, False, inv, done))
    events.sort(key=lambda e: e[0])
    frontier: dict[int, Op] = {}
    preds: dict[int, list[int]] = {}
    for _, is_invoke, _inv, done in events:
        if is_invoke:
            preds[done.index] = list(frontier)
            for prev in frontier.values():
                graph.add_edge(prev, done, "realtime", "{a} completed before {b} was invoked")
        elif done.type == "ok":
            for p in preds.get(done.index, ()):
                frontier.pop(p, None)
            frontier[done.index] = done
