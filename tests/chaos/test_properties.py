"""Property tests: the checkers against a model and against the brute-force oracle.

* Histories produced by running transactions one at a time against a model (with real-time
  layouts that respect that serial order) must pass every checker and every model.
* Histories whose reads were then perturbed (stale, missing or foreign elements, random
  layouts) may be anomalous; whenever the checker rules a model out, the oracle must confirm that no
  serial order explains the history under that model (no false positives).

* Histories whose ts-carrying transactions ran one after another in real time (so real-time order
  is ts order) and whose reads were then perturbed: whenever the checkers *with* the ts sources
  (commit-ts version order, ts replay) rule out strict serializability, the strict oracle must
  agree. This covers the ts-only inferences, e.g. ``rw`` edges from ambiguous ``None`` reads.

Register histories include deletes (``["w", k, None]``; reads of absent keys return ``None``), and
in serial histories some committed read-only transactions carry no ``ts``, as the store's
read-only transactions do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chaos.checkers import check_all, list_append, oracle, replay, rw_register
from chaos.checkers.result import MODELS
from chaos.history import History

KEYS = ("x", "y", "z")
PROFILE = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Planned:
    """A transaction after model execution: completed micro-ops, outcome and serial slot."""

    mops: list[list[Any]]
    outcome: str
    applied: bool
    no_ts: bool = False


def _invocation(mops: list[list[Any]]) -> list[list[Any]]:
    return [[f, k, None if f == "r" else v] for f, k, v in mops]


@st.composite
def planned_txns(draw: st.DrawFn, workload: str, max_txns: int = 6) -> list[Planned]:
    """Run 1 to ``max_txns`` random transactions serially against a model store."""
    write = "append" if workload == "list-append" else "w"
    keys = KEYS[: draw(st.integers(1, 3))]
    state: dict[str, Any] = {}
    counter = 0
    out = []
    for _ in range(draw(st.integers(1, max_txns))):
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info"]))
        applied = outcome == "ok" or (outcome == "info" and draw(st.booleans()))
        local = dict(state)
        mops: list[list[Any]] = []
        for _ in range(draw(st.integers(1, 4))):
            k = draw(st.sampled_from(keys))
            if draw(st.booleans()):
                if write == "w" and draw(st.integers(0, 3)) == 0:
                    mops.append(["w", k, None])  # a delete
                    local.pop(k, None)
                    continue
                counter += 1
                mops.append([write, k, counter])
                local[k] = [*local.get(k, []), counter] if write == "append" else counter
            else:
                default: Any = [] if write == "append" else None
                got = local.get(k, default)
                mops.append(["r", k, list(got) if isinstance(got, list) else got])
        if applied:
            state = local
        out.append(Planned(mops, outcome, applied))
    return out


def _layout(draw: st.DrawFn, n: int, respect_order: bool) -> list[tuple[int, bool]]:
    """Event order ``[(txn, is_invoke)]``; if ``respect_order``, txn i is live at slot i."""
    events = []
    for i in range(n):
        if respect_order:
            start, end = draw(st.integers(0, i)), draw(st.integers(i, n - 1))
        else:
            start = draw(st.integers(0, n - 1))
            end = draw(st.integers(start, n - 1))
        events += [((start, 0, i), i, True), ((end, 2, i), i, False)]
    return [(i, inv) for _, i, inv in sorted(events)]


def build_history(
    txns: list[Planned], layout: list[tuple[int, bool]], with_ts: bool = False
) -> History:
    """Lay the transactions out as a history, allocating processes as Jepsen workers do."""
    h = History()
    busy: dict[int, Any] = {}
    retired: set[int] = set()
    invokes: dict[int, Any] = {}
    for t, (i, is_invoke) in enumerate(layout):
        p = txns[i]
        if is_invoke:
            proc = min(set(range(len(txns) * 2)) - set(busy) - retired)
            busy[proc] = i
            invokes[i] = h.invoke(proc, "txn", _invocation(p.mops), time_ns=t)
        else:
            inv = invokes[i]
            value = p.mops if p.outcome == "ok" else _invocation(p.mops)
            ts = (i,) if with_ts and p.applied and not p.no_ts else None
            h.complete(inv, p.outcome, value, time_ns=t, ts=ts)  # type: ignore[arg-type]
            del busy[inv.process]
            if p.outcome == "info":
                retired.add(inv.process)
    h.validate()
    return h


def _perturb_read(draw: st.DrawFn, mop: list[Any], pool: list[Any], workload: str) -> None:
    f, _k, v = mop
    if f != "r":
        return
    if workload == "rw-register":
        mop[2] = draw(st.sampled_from([None, *pool]))
        return
    choice = draw(st.integers(0, 3))
    if choice == 0 and v:
        mop[2] = v[: draw(st.integers(0, len(v) - 1))]  # stale prefix
    elif choice == 1 and v:
        del mop[2][draw(st.integers(0, len(v) - 1))]  # a hole
    elif choice == 2 and pool:
        mop[2] = [*v, draw(st.sampled_from(pool))]  # an extra (maybe future or aborted) element
    elif pool:
        mop[2] = draw(st.permutations(pool)).copy()[: draw(st.integers(0, len(pool)))]


@st.composite
def serial_histories(draw: st.DrawFn, workload: str, max_txns: int = 6) -> History:
    txns = draw(planned_txns(workload, max_txns))
    for t in txns:
        if t.outcome == "ok" and all(f == "r" for f, _, _ in t.mops):
            t.no_ts = draw(st.booleans())  # read-only: serialized at an instant, not at a ts
    return build_history(txns, _layout(draw, len(txns), True), with_ts=True)


@st.composite
def perturbed_histories(draw: st.DrawFn, workload: str) -> History:
    txns = draw(planned_txns(workload))
    _perturb_reads(draw, txns, workload)
    return build_history(txns, _layout(draw, len(txns), draw(st.booleans())))


def _perturb_reads(draw: st.DrawFn, txns: list[Planned], workload: str) -> None:
    """Change about a quarter of the ok transactions' reads to other values written to the key."""
    pools: dict[Any, list[Any]] = {}
    for t in txns:
        for f, k, v in t.mops:
            if f != "r":
                pools.setdefault(k, []).append(v)
    for t in txns:
        for mop in t.mops:
            if t.outcome == "ok" and draw(st.integers(0, 3)) == 0:
                _perturb_read(draw, mop, pools.get(mop[1], []), workload)


def _ts_realtime_layout(draw: st.DrawFn, txns: list[Planned]) -> list[tuple[int, bool]]:
    """Like ``_layout(respect_order=True)``, but transactions with a ts never overlap."""
    n = len(txns)
    events = []
    for i, p in enumerate(txns):
        if p.applied and not p.no_ts:
            start = end = i
        else:
            start, end = draw(st.integers(0, i)), draw(st.integers(i, n - 1))
        events += [((start, 0, i), i, True), ((end, 2, i), i, False)]
    return [(i, inv) for _, i, inv in sorted(events)]


@st.composite
def ts_realtime_histories(draw: st.DrawFn, workload: str) -> History:
    """Perturbed serial histories whose ts-carrying transactions ran in ts order in real time.

    There are no ``info`` outcomes (applied ones become ``ok``, the others ``fail``): the ts
    checkers take an ``info`` transaction with a ts as committed and ignore one without, while the
    oracle may keep or drop either. Read-only ``ok`` transactions may lack a ts.
    """
    txns = draw(planned_txns(workload))
    for t in txns:
        if t.outcome == "info":
            t.outcome = "ok" if t.applied else "fail"
        read_only = all(f == "r" for f, _, _ in t.mops)
        t.no_ts = t.outcome != "ok" or (read_only and draw(st.booleans()))
    _perturb_reads(draw, txns, workload)
    return build_history(txns, _ts_realtime_layout(draw, txns), with_ts=True)


def _checker(workload: str, history: History) -> dict[str, bool]:
    if workload == "list-append":
        return list_append.check(history).verdict
    return rw_register.check(history, use_ts=False).verdict


@PROFILE
@given(st.data())
def test_serial_list_append_histories_pass(data: st.DataObject) -> None:
    history = data.draw(serial_histories("list-append"))
    result = list_append.check(history, "strict-serializable")
    assert result.valid, result.summary()
    assert replay.check(history, "list-append").valid
    assert oracle.serial_order(history, "list-append", "strict-serializable") is not None


@settings(PROFILE, max_examples=60)
@given(st.data(), st.sampled_from(["list-append", "rw-register"]))
def test_larger_serial_histories_pass(data: st.DataObject, workload: str) -> None:
    history = data.draw(serial_histories(workload, max_txns=40))
    result = check_all(history, workload, "strict-serializable")
    assert result.valid, result.summary()
    if any(op.ts is not None for op in history.ops):
        assert any(n.startswith("ts-replay: replayed") for n in result.notes)


@PROFILE
@given(st.data())
def test_serial_register_histories_pass(data: st.DataObject) -> None:
    history = data.draw(serial_histories("rw-register"))
    result = rw_register.check(history, "strict-serializable")
    assert result.valid, result.summary()
    assert replay.check(history, "rw-register").valid
    assert oracle.serial_order(history, "rw-register", "strict-serializable") is not None


@settings(PROFILE, max_examples=500)
@given(st.data(), st.sampled_from(["list-append", "rw-register"]))
def test_no_false_positives_against_oracle(data: st.DataObject, workload: str) -> None:
    history = data.draw(perturbed_histories(workload))
    verdict = _checker(workload, history)
    event(f"{workload}: serializable={verdict['serializable']}")
    for model in MODELS:
        if not verdict[model]:
            order = oracle.serial_order(history, workload, model)  # type: ignore[arg-type]
            assert order is None, (model, [op.to_json() for op in history.ops])


@settings(PROFILE, max_examples=400)
@given(st.data(), st.sampled_from(["list-append", "rw-register"]))
def test_no_false_positives_with_ts_against_strict_oracle(
    data: st.DataObject, workload: str
) -> None:
    history = data.draw(ts_realtime_histories(workload))
    result = check_all(history, workload, "strict-serializable")
    event(f"{workload}: strict={result.valid}")
    if not result.valid:
        order = oracle.serial_order(history, workload, "strict-serializable")  # type: ignore[arg-type]
        assert order is None, (result.summary(), [op.to_json() for op in history.ops])
