"""Cycle search in a dependency graph, Adya/Elle classification and explanations.

Theory of operation
-------------------
Every cycle in the ``ww``/``wr``/``rw`` graph is a serializability violation; with ``process``
(resp. ``realtime``) edges added it is a strong-session (resp. strict) violation. Each edge step
counts as one label, preferring ``ww > wr > rw > process > realtime`` among the labels the search
allows, and a cycle is classified by its steps (paper section 6, elle/txn.clj):

=================  ==========================================
G0                 only ww
G1c                ww and wr, at least one wr
G-single           exactly one rw
G-nonadjacent      two or more rw, no two cyclically adjacent
G2-item            two or more rw, some two adjacent
=================  ==========================================

``-realtime`` is appended if some step is a real-time edge, otherwise ``-process`` if some step
is a process edge.

Search. For each variant (plain, process, realtime) we restrict the graph to the allowed labels
and take its strongly connected components; only non-trivial ones hold cycles. Inside each, for
each class in severity order, a breadth-first search runs over *states* ``(node, summary)`` where
the summary records what the constraint needs (rw count capped at two, whether the first/last
step was rw, whether two rw were adjacent, whether a wr / extra-order step was seen). BFS from a
start node back to itself therefore returns the shortest closed walk satisfying the constraint.
A closed walk may revisit a node; it is split into simple cycles, each classified on its own
(every one is a real cycle). Variants only search components that contain an edge of their extra
kind, so plain cycles are not reported three times. A per-component deadline bounds the work; on
timeout we fall back to one shortest cycle through an edge (still a real cycle) and add a note.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx

from chaos.checkers.graph import DATA_LABELS, DepGraph
from chaos.checkers.result import Anomaly

__all__ = [
    "Cycle",
    "CYCLE_KINDS",
    "classify",
    "find_cycles",
    "explain",
    "cycle_anomalies",
]

PREFERENCE: tuple[str, ...] = ("ww", "wr", "rw", "process", "realtime")
CYCLE_KINDS: tuple[str, ...] = ("G0", "G1c", "G-single", "G-nonadjacent", "G2-item")
_SPEC_LABELS: dict[str, frozenset[str]] = {
    "G0": frozenset({"ww"}),
    "G1c": frozenset({"ww", "wr"}),
    "G-single": DATA_LABELS,
    "G-nonadjacent": DATA_LABELS,
    "G2-item": DATA_LABELS,
}
# Summary of a partial walk: (rw count capped at 2, first step rw or None, last step rw,
# two adjacent rw seen, wr seen, extra-order step seen).
_State = tuple[int, bool | None, bool, bool, bool, bool]


@dataclass(frozen=True)
class Cycle:
    """A simple cycle ``nodes[0] -> nodes[1] -> ... -> nodes[0]``; ``labels[i]`` leaves ``i``."""

    nodes: tuple[int, ...]
    labels: tuple[str, ...]
    kind: str


def classify(labels: Iterable[str]) -> str:
    """The anomaly name of a cycle whose steps have these (already chosen) labels."""
    steps = list(labels)
    rw = [s == "rw" for s in steps]
    n_rw = sum(rw)
    if n_rw == 1:
        base = "G-single"
    elif n_rw >= 2:
        adjacent = any(rw[i] and rw[i - 1] for i in range(len(rw)))
        base = "G2-item" if adjacent else "G-nonadjacent"
    elif "wr" in steps:
        base = "G1c"
    else:
        base = "G0"
    if "realtime" in steps:
        return base + "-realtime"
    if "process" in steps:
        return base + "-process"
    return base


def _step_label(graph: DepGraph, a: int, b: int, allowed: frozenset[str]) -> str | None:
    labels = graph.labels(a, b)
    return next((p for p in PREFERENCE if p in allowed and p in labels), None)


def _accepts(spec: str, extra: str | None, st: _State) -> bool:
    n_rw, first, last, adj, wr, x = st
    if extra is not None and not x:
        return False
    adj = adj or (bool(first) and last and n_rw >= 2)
    if spec == "G0":
        return True
    if spec == "G1c":
        return wr
    if spec == "G-single":
        return n_rw == 1
    if spec == "G-nonadjacent":
        return n_rw >= 2 and not adj
    return n_rw >= 2 and adj


def _advance(spec: str, extra: str | None, st: _State, label: str) -> _State | None:
    n_rw, first, last, adj, wr, x = st
    is_rw = label == "rw"
    if spec == "G-single" and is_rw and n_rw >= 1:
        return None
    adj = adj or (last and is_rw)
    if spec == "G-nonadjacent" and adj:
        return None
    nxt: _State = (
        min(2, n_rw + is_rw),
        is_rw if first is None else first,
        is_rw,
        adj,
        wr or label == "wr",
        x or label == extra,
    )
    if spec in ("G0", "G1c", "G-single"):  # adjacency bookkeeping is irrelevant: collapse it
        nxt = (nxt[0], None, False, False, nxt[4] if spec == "G1c" else False, nxt[5])
    return nxt


def _walk_from(
    graph: DepGraph,
    sub: nx.DiGraph,
    start: int,
    *,
    spec: str,
    extra: str | None,
    allowed: frozenset[str],
    deadline: float,
) -> list[tuple[int, str]] | None:
    """Shortest closed walk at ``start`` meeting ``spec``: ``[(node, label into next), ...]``."""
    init: _State = (0, None, False, False, False, False)
    parent: dict[tuple[int, _State], tuple[tuple[int, _State], str] | None] = {(start, init): None}
    queue = deque([(start, init)])
    while queue:
        if time.monotonic() > deadline:
            raise TimeoutError
        node, st = queue.popleft()
        for nxt in sub.successors(node):
            label = _step_label(graph, node, nxt, allowed)
            if label is None:
                continue
            st2 = _advance(spec, extra, st, label)
            if st2 is None:
                continue
            if nxt == start:
                if _accepts(spec, extra, st2):
                    walk = [(node, label)]
                    cur = parent[(node, st)]
                    while cur is not None:
                        (pnode, pst), plabel = cur
                        walk.append((pnode, plabel))
                        cur = parent[(pnode, pst)]
                    walk.reverse()
                    return walk
                continue
            if (nxt, st2) not in parent:
                parent[(nxt, st2)] = ((node, st), label)
                queue.append((nxt, st2))
    return None


def _split(walk: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Split a closed walk into simple cycles."""
    cycles: list[list[tuple[int, str]]] = []
    stack: list[tuple[int, str]] = []
    for node, label in [*walk, (walk[0][0], "")]:
        pos = next((i for i, (n, _) in enumerate(stack) if n == node), None)
        if pos is not None:
            cycles.append(stack[pos:])
            del stack[pos:]
        stack.append((node, label))
    return cycles


def _canonical(steps: list[tuple[int, str]]) -> tuple[tuple[int, str], ...]:
    i = min(range(len(steps)), key=lambda j: steps[j][0])
    return tuple(steps[i:] + steps[:i])


def _has_extra_edge(graph: DepGraph, sub: nx.DiGraph, extra: str, allowed: frozenset[str]) -> bool:
    return any(_step_label(graph, a, b, allowed) == extra for a, b in sub.edges)


def _nontrivial(sub: nx.DiGraph) -> list[set[int]]:
    return [
        c
        for c in nx.strongly_connected_components(sub)
        if len(c) > 1 or any(sub.has_edge(n, n) for n in c)
    ]


def find_cycles(
    graph: DepGraph, extra: str | None = None, timeout_s: float = 1.0
) -> tuple[list[Cycle], list[str]]:
    """Cycles of every class for one variant (``None``, ``"process"`` or ``"realtime"``).

    Returns the cycles and notes (about timeouts).
    """
    variant = DATA_LABELS | ({extra, "process"} if extra else set())
    notes: list[str] = []
    seen: dict[tuple[tuple[int, str], ...], Cycle] = {}
    variant_graph = graph.restrict(variant)
    for comp in _nontrivial(variant_graph):
        whole = variant_graph.subgraph(comp)
        if extra and not _has_extra_edge(graph, whole, extra, frozenset(variant)):
            continue
        deadline = time.monotonic() + timeout_s
        found_here = False
        try:
            for spec in CYCLE_KINDS:
                allowed = _SPEC_LABELS[spec] | ({extra, "process"} if extra else set())
                spec_graph = _labelled_subgraph(graph, whole, allowed)
                for inner in _nontrivial(spec_graph):
                    part = spec_graph.subgraph(inner)
                    if extra and not _has_extra_edge(graph, part, extra, allowed):
                        continue
                    walk = _first_walk(
                        graph, part, spec=spec, extra=extra, allowed=allowed, deadline=deadline
                    )
                    if walk is None:
                        continue
                    for steps in _split(walk):
                        key = _canonical(steps)
                        if key not in seen:
                            labels = tuple(lbl for _, lbl in key)
                            seen[key] = Cycle(tuple(n for n, _ in key), labels, classify(labels))
                            found_here = True
        except TimeoutError:
            notes.append(f"cycle search timed out in a component of {len(comp)} transactions")
        if not found_here:
            fallback = _fallback(graph, whole, extra, frozenset(variant))
            if fallback is not None:
                seen.setdefault(
                    (tuple(zip(fallback.nodes, fallback.labels, strict=True))), fallback
                )
    return list(seen.values()), notes


def _labelled_subgraph(graph: DepGraph, sub: nx.DiGraph, allowed: frozenset[str]) -> nx.DiGraph:
    out = nx.DiGraph()
    out.add_edges_from(
        (a, b) for a, b in sub.edges if _step_label(graph, a, b, allowed) is not None
    )
    return out


def _first_walk(
    graph: DepGraph,
    part: nx.DiGraph,
    *,
    spec: str,
    extra: str | None,
    allowed: frozenset[str],
    deadline: float,
) -> list[tuple[int, str]] | None:
    # A cycle with a required step passes through that step's tail: start only there.
    need: Callable[[str], bool]
    if extra is not None:
        need = extra.__eq__
    elif spec == "G1c":
        need = "wr".__eq__
    elif spec != "G0":
        need = "rw".__eq__
    else:
        need = bool
    starts = sorted({a for a, b in part.edges if need(_step_label(graph, a, b, allowed) or "")})
    for start in starts:
        walk = _walk_from(
            graph, part, start, spec=spec, extra=extra, allowed=allowed, deadline=deadline
        )
        if walk is not None:
            return walk
    return None


def _fallback(
    graph: DepGraph, whole: nx.DiGraph, extra: str | None, allowed: frozenset[str]
) -> Cycle | None:
    for a, b in sorted(whole.edges):
        label = _step_label(graph, a, b, allowed)
        if extra is not None and label != extra:
            continue
        path: list[int] = nx.shortest_path(whole, b, a)
        nodes = [a, *path[:-1]]
        labels = [label or ""]
        labels += [_step_label(graph, x, y, allowed) or "" for x, y in itertools.pairwise(path)]
        return Cycle(tuple(nodes), tuple(labels), classify(labels))
    return None


def explain(graph: DepGraph, cycle: Cycle, describe: Callable[[Any], str] = repr) -> str:
    """One line per step, then what each named transaction was."""
    names = {n: f"T{i + 1}" for i, n in enumerate(cycle.nodes)}
    lines = []
    for i, node in enumerate(cycle.nodes):
        nxt = cycle.nodes[(i + 1) % len(cycle.nodes)]
        label = cycle.labels[i]
        why = graph.labels(node, nxt).get(label, f"{{a}} -> {{b}} ({label})")
        text = why.replace("{a}", names[node]).replace("{b}", names[nxt])
        lines.append(f"{text} ({label})")
    lines.append("so the cycle " + " -> ".join([*names.values(), names[cycle.nodes[0]]]))
    for node, name in names.items():
        op = graph.ops[node]
        lines.append(
            f"  {name} = op {op.index} ({op.type}, process {op.process}): {describe(op.value)}"
        )
    return "\n".join(lines)


def cycle_anomalies(
    graph: DepGraph,
    extras: Iterable[str | None] = (None, "process", "realtime"),
    timeout_s: float = 1.0,
    describe: Callable[[Any], str] = repr,
) -> tuple[list[Anomaly], list[str]]:
    """Search every variant and turn the cycles into explained :class:`Anomaly` records."""
    anomalies: list[Anomaly] = []
    notes: list[str] = []
    reported: set[tuple[tuple[int, ...], tuple[str, ...]]] = set()
    for extra in extras:
        cycles, more = find_cycles(graph, extra, timeout_s)
        notes += more
        for c in sorted(cycles, key=lambda c: (len(c.nodes), c.nodes)):
            if (c.nodes, c.labels) in reported:
                continue
            reported.add((c.nodes, c.labels))
            ops = tuple(graph.ops[n] for n in c.nodes)
            anomalies.append(Anomaly(c.kind, explain(graph, c, describe), ops))
    return anomalies, notes
