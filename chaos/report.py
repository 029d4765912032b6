"""Self-contained HTML report and ``results.json`` for one chaos run.

Theory of operation
-------------------
A run leaves a :class:`~chaos.history.History`, a checker
:class:`~chaos.checkers.result.CheckResult`, the nemesis schedule as :class:`FaultWindow`
intervals and a free-form ``summary`` (workload, nemeses, seed, duration, clients, ...).
:func:`write_report` turns them into two files in ``out_dir``:

* ``report.html``: one file with inline CSS and hand-written SVG (no JavaScript, no external
  resources), so it can be attached to a CI run and opened anywhere. It shows the title, a
  PASS/FAIL banner, the summary table, the verdict per consistency model, throughput and latency
  over time with the fault windows shaded (one colour per fault kind, with a legend), outcome
  counts by operation function, the fault windows, and each anomaly's explanation step by step
  with the ops involved. Every piece of text goes through :func:`html.escape`.
* ``results.json``: the checker result as data (valid, verdicts, anomaly names and counts,
  explanations, op indexes) plus the run ``summary``, the fault windows and the failure split
  (below).
* ``report.txt``: the same in plain text for a terminal: verdict, outcomes by operation, the
  failure split by code and its timeline.

A replicated run also passes its measured leader faults (:mod:`chaos.failover`: per fault the
partitions its target led and the longest time each went without an acknowledged write): a
*Failover* table in the HTML, ``failover`` in ``results.json``, the same lines in ``report.txt``.

Failures: contention or faults? Every ``fail`` and ``info`` completion is counted under its
code (:func:`~chaos.history.failure_code`: the error code, and a cancellation's per-op reasons,
e.g. ``TransactionCanceled(ConditionFailed)``), split into *during faults* (the op's interval,
invoke to completion, overlaps a fault window) and *outside faults*, and over time in buckets of
completion time no wider than the shortest fault window (:func:`failure_bucket_ns`: the shortest
window and ``FAILURE_BUCKET_CAP_NS``, rounded down to 1, 2 or 5 times a power of ten; each bucket
names the fault kinds that overlap it). Conflicts and failed conditions outside every window are
contention; ``Unavailable`` and ``OutcomeUnknown`` inside windows are the faults at work
(:func:`failure_split`).

Time. Op and fault times share one clock (``time.monotonic_ns()`` of the harness, or the
simulator's virtual clock). Both plots measure time in seconds since the history's first event,
the *origin*; faults are shifted by the same origin.

Numbers. :func:`throughput_series` counts completions (``ok``/``fail``/``info``) per bucket of
completion time, and :func:`latency_series` gives, per bucket of *invoke* time (as Jepsen's
latency plots do) and completion type, the number of ops and the nearest-rank p50/p99/max of
``completion - invoke`` in milliseconds. Both are pure and return plain named tuples, so they are
unit-tested directly. The latency plot has a logarithmic y axis, since timeouts and fast commits
differ by decades.

Bounds. A failing run can report thousands of anomalies, so the HTML shows at most
:data:`MAX_ANOMALIES_PER_KIND` anomalies of each kind and :data:`MAX_ANOMALIES_SHOWN` in all
(anomalies the model prohibits first), each with at most :data:`MAX_EXPLANATION_LINES` explanation
lines and :data:`MAX_OPS_PER_ANOMALY` ops, values cut to :data:`MAX_VALUE_CHARS` characters, and at
most :data:`MAX_FAULTS_LISTED` fault rows. ``results.json`` keeps up to
:data:`MAX_ANOMALIES_JSON` anomalies. The report states every limit it applied.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from chaos.checkers.result import MODELS, Anomaly, CheckResult, prohibits
from chaos.failover import Unavailability, failover_text
from chaos.history import History, Op, OpType, failure_code

__all__ = [
    "MAX_ANOMALIES_SHOWN",
    "MAX_ANOMALIES_PER_KIND",
    "MAX_OPS_PER_ANOMALY",
    "MAX_EXPLANATION_LINES",
    "MAX_VALUE_CHARS",
    "MAX_FAULTS_LISTED",
    "MAX_ANOMALIES_JSON",
    "FAILURE_BUCKET_CAP_NS",
    "FAILURE_BUCKET_FLOOR_NS",
    "FaultWindow",
    "FailureBucket",
    "ThroughputBucket",
    "LatencyBucket",
    "COMPLETION_TYPES",
    "origin_ns",
    "auto_bucket_ns",
    "outcome_counts",
    "throughput_series",
    "latency_series",
    "failure_bucket_ns",
    "failure_series",
    "failure_split",
    "failures_text",
    "verdict_line",
    "results_json",
    "render_html",
    "report_text",
    "write_report",
]

MAX_ANOMALIES_SHOWN = 25
MAX_ANOMALIES_PER_KIND = 5
MAX_OPS_PER_ANOMALY = 12
MAX_EXPLANATION_LINES = 60
MAX_VALUE_CHARS = 240
MAX_FAULTS_LISTED = 200
MAX_ANOMALIES_JSON = 1000
FAILURE_BUCKET_CAP_NS = 1_000_000_000  # failure buckets: at most 1 s wide...
FAILURE_BUCKET_FLOOR_NS = 1_000_000  # ... and at least 1 ms (a shorter window is not resolved)
MAX_FAILURE_CODES_PLOTTED = 6

COMPLETION_TYPES: tuple[OpType, ...] = ("ok", "fail", "info")
_TYPE_COLOURS: dict[str, str] = {"ok": "#2e7d32", "fail": "#c62828", "info": "#ef6c00"}
_FAULT_PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#6b6ecf",
)
_LATENCY_FLOOR_MS = 1e-3  # log scale: anything faster than 1 us is drawn at 1 us


@dataclass(frozen=True)
class FaultWindow:
    """One nemesis fault interval ``[start_ns, end_ns]`` on the history's clock."""

    start_ns: int
    end_ns: int
    kind: str
    target: str
    # Replicated runs' leader faults: the partitions the target led when the fault opened
    # (kill-etcd: every partition). Empty for every other fault.
    partitions: tuple[int, ...] = ()
    # Real runs: when it opened on the wall clock (Unix seconds), to find it in the processes'
    # logs, whose ``ts`` is UTC wall time. None in the simulator.
    wall_start_s: float | None = None

    def __post_init__(self) -> None:
        if self.end_ns < self.start_ns:
            raise ValueError(f"fault {self.kind} ends before it starts")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``results.json``."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "target": self.target,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
        }
        if self.partitions:
            out["partitions"] = list(self.partitions)
        if self.wall_start_s is not None:
            opened = datetime.fromtimestamp(self.wall_start_s, UTC)
            out["wall_start"] = opened.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return out


class ThroughputBucket(NamedTuple):
    """Completions whose time falls in ``[start_ns, start_ns + bucket)`` (relative to origin)."""

    start_ns: int
    ok: int
    fail: int
    info: int

    def total(self) -> int:
        """All completions in the bucket."""
        return self.ok + self.fail + self.info


class FailureBucket(NamedTuple):
    """Failures (``fail``/``info``) completed in ``[start_ns, start_ns + bucket)`` (relative to
    the origin), by code, and the kinds of the fault windows that overlap the bucket."""

    start_ns: int
    faults: tuple[str, ...]
    codes: dict[str, int]


class LatencyBucket(NamedTuple):
    """Latency of the ops of one completion ``type`` invoked in one bucket (ms, nearest rank)."""

    start_ns: int
    type: OpType
    ops: int
    p50_ms: float
    p99_ms: float
    max_ms: float


# -- numbers ------------------------------------------------------------------------------------


def origin_ns(history: History) -> int:
    """The time of the history's first event (0 for an empty history): both plots start here."""
    return history.ops[0].time_ns if history.ops else 0


def auto_bucket_ns(span_ns: int, target_buckets: int = 60) -> int:
    """A round bucket width (1, 2 or 5 times a power of ten, in ns) giving ~``target_buckets``."""
    raw = max(1.0, span_ns / max(1, target_buckets))
    return max(1000, int(_nice_step(raw)))


def outcome_counts(history: History) -> dict[str, int]:
    """``{"ok": n, "fail": n, "info": n, "pending": n}``: completions by type, open invokes."""
    counts: dict[str, int] = dict.fromkeys((*COMPLETION_TYPES, "pending"), 0)
    for op in history.ops:
        if op.type == "invoke":
            if history.completion(op) is None:
                counts["pending"] += 1
        else:
            counts[op.type] += 1
    return counts


def _check_bucket(bucket_ns: int) -> None:
    if bucket_ns <= 0:
        raise ValueError(f"bucket_ns must be positive, not {bucket_ns}")


def throughput_series(history: History, bucket_ns: int) -> list[ThroughputBucket]:
    """Completions per bucket of completion time, every bucket from the origin to the last one."""
    _check_bucket(bucket_ns)
    t0 = origin_ns(history)
    per: dict[int, Counter[str]] = {}
    for op in history.ops:
        if op.type != "invoke":
            per.setdefault((op.time_ns - t0) // bucket_ns, Counter())[op.type] += 1
    if not per:
        return []
    return [
        ThroughputBucket(i * bucket_ns, c["ok"], c["fail"], c["info"])
        for i in range(max(per) + 1)
        for c in [per.get(i, Counter())]
    ]


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of a non-empty ascending sequence."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_series(history: History, bucket_ns: int) -> list[LatencyBucket]:
    """Per (invoke-time bucket, completion type): ops, p50, p99 and max latency in ms.

    Only non-empty combinations are returned, ordered by bucket then ``ok``, ``fail``, ``info``.
    """
    _check_bucket(bucket_ns)
    t0 = origin_ns(history)
    groups: dict[tuple[int, OpType], list[float]] = {}
    for inv, done in history.pairs():
        key = ((inv.time_ns - t0) // bucket_ns, done.type)
        groups.setdefault(key, []).append((done.time_ns - inv.time_ns) / 1e6)
    order: dict[str, int] = {t: i for i, t in enumerate(COMPLETION_TYPES)}
    out: list[LatencyBucket] = []
    for (bucket, type_), values in sorted(
        groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])
    ):
        values.sort()
        out.append(
            LatencyBucket(
                bucket * bucket_ns,
                type_,
                len(values),
                _percentile(values, 50),
                _percentile(values, 99),
                values[-1],
            )
        )
    return out


def _nice_floor(raw: float) -> int:
    """The largest of 1, 2, 5 times a power of ten that is <= ``raw`` (>= 1)."""
    exp = math.floor(math.log10(raw))
    best = 10**exp
    for m in (2, 5):
        if m * 10**exp <= raw:
            best = m * 10**exp
    return int(best)


def failure_bucket_ns(faults: Sequence[FaultWindow], cap_ns: int = FAILURE_BUCKET_CAP_NS) -> int:
    """The failure timeline's bucket: ``min(cap_ns, shortest fault window)`` rounded down to 1,
    2 or 5 times a power of ten, never below ``FAILURE_BUCKET_FLOOR_NS``."""
    _check_bucket(cap_ns)
    widths = [f.end_ns - f.start_ns for f in faults if f.end_ns > f.start_ns]
    return max(FAILURE_BUCKET_FLOOR_NS, _nice_floor(min([cap_ns, *widths])))


def _overlapping(start_ns: int, end_ns: int, faults: Sequence[FaultWindow]) -> tuple[str, ...]:
    """The kinds (sorted, distinct) of the windows that overlap ``[start_ns, end_ns]``."""
    return tuple(sorted({f.kind for f in faults if f.start_ns <= end_ns and start_ns <= f.end_ns}))


def failure_series(
    history: History, faults: Sequence[FaultWindow], bucket_ns: int
) -> list[FailureBucket]:
    """Failures per bucket of completion time, by code, every bucket from the origin to the
    last failure or fault (see the module)."""
    _check_bucket(bucket_ns)
    t0 = origin_ns(history)
    per: dict[int, Counter[str]] = {}
    for op in history.ops:
        if op.type in ("fail", "info"):
            per.setdefault((op.time_ns - t0) // bucket_ns, Counter())[failure_code(op)] += 1
    last_fault = max((f.end_ns - t0 for f in faults), default=-1)
    count = max(max(per, default=-1), last_fault // bucket_ns if last_fault >= 0 else -1) + 1
    out = []
    for i in range(count):
        start = t0 + i * bucket_ns
        codes = per.get(i, Counter())
        out.append(
            FailureBucket(
                i * bucket_ns,
                _overlapping(start, start + bucket_ns - 1, faults),
                dict(sorted(codes.items())),
            )
        )
    return out


def failure_split(
    history: History, faults: Sequence[FaultWindow], bucket_ns: int | None = None
) -> dict[str, Any]:
    """The failure split as data: ``bucket_ns``, ``by_code`` (per code: ``fail``, ``info``,
    ``during_faults``, ``outside_faults``, most frequent first) and ``series`` (the non-empty
    buckets of :func:`failure_series`, times in seconds since the origin)."""
    bucket = failure_bucket_ns(faults) if bucket_ns is None else bucket_ns
    by_code: dict[str, Counter[str]] = {}
    for inv, done in history.pairs():
        if done.type not in ("fail", "info"):
            continue
        counts = by_code.setdefault(failure_code(done), Counter())
        counts[done.type] += 1
        during = _overlapping(inv.time_ns, done.time_ns, faults)
        counts["during_faults" if during else "outside_faults"] += 1
    ordered = sorted(by_code.items(), key=lambda kv: (-kv[1]["fail"] - kv[1]["info"], kv[0]))
    fields = ("fail", "info", "during_faults", "outside_faults")
    return {
        "bucket_ns": bucket,
        "by_code": {code: {f: c[f] for f in fields} for code, c in ordered},
        "series": [
            {"start_s": b.start_ns / 1e9, "faults": list(b.faults), "codes": b.codes}
            for b in failure_series(history, faults, bucket)
            if b.codes or b.faults
        ],
    }


def failures_text(
    history: History,
    faults: Sequence[FaultWindow],
    bucket_ns: int | None = None,
    *,
    timeline: bool = True,
) -> str:
    """The failure split as text: one line per code, then (``timeline``) one line per bucket
    with failures or faults."""
    split = failure_split(history, faults, bucket_ns)
    by_code: dict[str, dict[str, int]] = split["by_code"]
    if not by_code:
        lines = ["failures by code: none"]
    else:
        width = max(len(code) for code in by_code)
        lines = ["failures by code (fail/info; during fault windows/outside):"]
        lines += [
            f"  {code:<{width}}  fail {c['fail']:>5}  info {c['info']:>4}  "
            f"during faults {c['during_faults']:>5}  outside {c['outside_faults']:>5}"
            for code, c in by_code.items()
        ]
    if timeline:
        bucket = int(split["bucket_ns"])
        lines.append(
            f"failures over time (buckets of {_fmt(bucket / 1e9)} s of completion time; "
            "[kinds] = fault windows overlapping the bucket):"
        )
        for row in split["series"]:
            kinds = f"[{','.join(row['faults'])}]" if row["faults"] else ""
            codes = ", ".join(f"{code} {n}" for code, n in row["codes"].items()) or "-"
            lines.append(f"  {row['start_s']:>8.3f} s {kinds:<24} {codes}")
    return "\n".join(lines) + "\n"


def _kind_counts(anomalies: Iterable[Anomaly]) -> dict[str, int]:
    return dict(sorted(Counter(a.kind for a in anomalies).items()))


def verdict_line(workload: str, history: History, result: CheckResult) -> str:
    """The one line a runner prints last, e.g. ``list-append: 12 ops (ok 10, ...) ... — PASS``."""
    c = outcome_counts(history)
    ops = c["ok"] + c["fail"] + c["info"]
    kinds = _kind_counts(result.anomalies)
    found = ", ".join(f"{k} ({n})" for k, n in kinds.items()) if kinds else "none"
    pending = f", pending {c['pending']}" if c["pending"] else ""
    return (
        f"{workload}: {ops} ops (ok {c['ok']}, fail {c['fail']}, info {c['info']}{pending}), "
        f"anomalies: {found} — {'PASS' if result.valid else 'FAIL'}"
    )


# -- results.json -------------------------------------------------------------------------------


def _jsonable(value: object) -> Any:
    """``value`` as JSON data: unknown objects (paths, enums, ...) become their ``str``."""
    return json.loads(json.dumps(value, default=str))


def _steps(explanation: str) -> list[str]:
    return [line.rstrip() for line in explanation.splitlines() if line.strip()]


def results_json(
    *,
    title: str,
    history: History,
    result: CheckResult,
    faults: Sequence[FaultWindow],
    summary: Mapping[str, object],
    failover: Sequence[Unavailability] = (),
) -> dict[str, Any]:
    """The content of ``results.json`` (see the module docstring)."""
    workload = str(summary.get("workload", result.checker or "check"))
    kept = result.anomalies[:MAX_ANOMALIES_JSON]
    out: dict[str, Any] = {
        "title": title,
        "valid": result.valid,
        "unknown": result.unknown,
        "model": result.model,
        "checker": result.checker,
        "verdict": dict(result.verdict),
        "not_models": result.not_models(),
        "verdict_line": verdict_line(workload, history, result),
        "counts": outcome_counts(history),
        "anomaly_kinds": sorted(result.kinds()),
        "anomaly_counts": _kind_counts(result.anomalies),
        "anomalies_total": len(result.anomalies),
        "anomalies_truncated": len(result.anomalies) > len(kept),
        "anomalies": [
            {
                "kind": a.kind,
                "prohibited": prohibits(result.model, a.kind),
                "explanation": a.explanation,
                "steps": _steps(a.explanation),
                "op_indexes": [op.index for op in a.ops],
            }
            for a in kept
        ],
        "notes": list(result.notes),
        "faults": [f.to_json() for f in faults],
        "failures": failure_split(history, faults),
        "summary": _jsonable(dict(summary)),
    }
    if failover:
        origin = origin_ns(history)
        out["failover"] = [entry.to_json(origin) for entry in failover]
    return out


# -- SVG ----------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is >= ``raw`` (> 0)."""
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        step = m * 10.0**exp
        if step >= raw * (1 - 1e-9):
            return step
    return 10.0 ** (exp + 1)  # pragma: no cover - the loop always returns


def _fmt(x: float) -> str:
    return f"{x:.6g}"


@dataclass(frozen=True)
class _Line:
    label: str
    colour: str
    points: list[tuple[float, float]]  # (seconds since origin, y)
    dashed: bool = False


_W, _H, _ML, _MR, _MT, _MB = 960, 280, 70, 16, 12, 40
_MAX_MARKERS = 300


def _fault_colours(faults: Sequence[FaultWindow]) -> dict[str, str]:
    kinds = sorted({f.kind for f in faults})
    return {k: _FAULT_PALETTE[i % len(_FAULT_PALETTE)] for i, k in enumerate(kinds)}


def _svg_plot(
    *,
    label: str,
    lines: Sequence[_Line],
    x_max_s: float,
    y_label: str,
    log_y: bool,
    faults: Sequence[FaultWindow],
    t0: int,
    colours: Mapping[str, str],
) -> str:
    pw, ph = _W - _ML - _MR, _H - _MT - _MB
    x_max_s = x_max_s if x_max_s > 0 else 1.0
    ys = [y for line in lines for _, y in line.points]

    def px(x: float) -> float:
        return _ML + min(max(x / x_max_s, 0.0), 1.0) * pw

    y_ticks: list[tuple[float, str]]
    if log_y:
        positive = [max(y, _LATENCY_FLOOR_MS) for y in ys] or [1.0]
        lo = math.floor(math.log10(min(positive)))
        hi = math.ceil(math.log10(max(positive)))
        hi = hi if hi > lo else lo + 1

        def frac(y: float) -> float:
            return (math.log10(max(y, _LATENCY_FLOOR_MS)) - lo) / (hi - lo)

        y_ticks = [(frac(10.0**d), _fmt(10.0**d)) for d in range(lo, hi + 1)]
    else:
        step = _nice_step(max(ys, default=0.0) / 5 if ys and max(ys) > 0 else 0.2)
        top = step * max(1, math.ceil(max(ys, default=0.0) / step))

        def frac(y: float) -> float:
            return y / top

        y_ticks = [(frac(i * step), _fmt(i * step)) for i in range(round(top / step) + 1)]

    def py(y: float) -> float:
        return _MT + (1 - min(max(frac(y), 0.0), 1.0)) * ph

    out = [
        f'<svg class="plot" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{_e(label)}">'
    ]
    for f in faults:  # fault shading first, under the data
        a, b = (f.start_ns - t0) / 1e9, (f.end_ns - t0) / 1e9
        x0, x1 = px(a), px(b)
        out.append(
            f'<rect class="fault" x="{x0:.1f}" y="{_MT}" width="{max(x1 - x0, 1.0):.1f}" '
            f'height="{ph}" fill="{colours[f.kind]}" fill-opacity="0.22">'
            f"<title>{_e(f.kind)} {_e(f.target)}: {_fmt(a)} s to {_fmt(b)} s</title></rect>"
        )
    x_step = _nice_step(x_max_s / 8)
    for i in range(math.floor(x_max_s / x_step + 1e-9) + 1):
        x = px(i * x_step)
        out.append(
            f'<line x1="{x:.1f}" y1="{_MT}" x2="{x:.1f}" y2="{_MT + ph}" class="grid"/>'
            f'<text x="{x:.1f}" y="{_MT + ph + 16}" text-anchor="middle">'
            f"{_fmt(i * x_step)}</text>"
        )
    for fy, text in y_ticks:
        y = _MT + (1 - fy) * ph
        out.append(
            f'<line x1="{_ML}" y1="{y:.1f}" x2="{_ML + pw}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{_ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(text)}</text>'
        )
    out.append(
        f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" class="frame"/>'
        f'<text x="{_ML + pw / 2:.1f}" y="{_H - 6}" text-anchor="middle">'
        f"time since start (s)</text>"
        f'<text x="14" y="{_MT + ph / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_MT + ph / 2:.1f})">{_e(y_label)}</text>'
    )
    for line in lines:
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line.points)
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{line.colour}" '
            f'stroke-width="1.6"{dash}><title>{_e(line.label)}</title></polyline>'
        )
        if len(line.points) <= _MAX_MARKERS:
            out.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{line.colour}"/>'
                for x, y in line.points
            )
    out.append("</svg>")
    return "".join(out)


def _swatch(colour: str, text: str, *, dashed: bool = False, area: bool = False) -> str:
    style = "dashed" if dashed else "area" if area else "line"
    return (
        f'<span class="key"><span class="swatch {style}" style="--c:{colour}"></span>'
        f"{_e(text)}</span>"
    )


def _legends(lines: Sequence[_Line], colours: Mapping[str, str]) -> str:
    series = "".join(_swatch(line.colour, line.label, dashed=line.dashed) for line in lines)
    if colours:
        faults = "".join(_swatch(c, k, area=True) for k, c in colours.items())
    else:
        faults = '<span class="key">none injected</span>'
    return (
        f'<div class="legend series-legend">{series}</div>'
        f'<div class="legend fault-legend"><span class="key"><b>faults:</b></span>{faults}</div>'
    )


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1000px;
color:#222;padding:0 12px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 4px}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;font-size:16px;color:#fff}
.banner.pass{background:#2e7d32}.banner.fail{background:#c62828}
.verdict-line{font-family:ui-monospace,monospace;background:#f5f5f5;padding:6px 8px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f5f5}td.num{text-align:right}
td.holds{color:#2e7d32;font-weight:600}td.violated{color:#c62828;font-weight:600}
code,.mono{font-family:ui-monospace,monospace;font-size:12.5px}
svg.plot{font:11px system-ui,sans-serif;max-width:100%;height:auto}
svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#999}
.legend{margin:2px 0 4px}.key{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:18px;height:10px;margin-right:4px;vertical-align:middle}
.swatch.line{border-top:2px solid var(--c);height:0}
.swatch.dashed{border-top:2px dashed var(--c);height:0}
.swatch.area{background:var(--c);opacity:.45}
.anomaly{border-left:4px solid #c62828;padding:2px 12px;margin:12px 0}
.anomaly.allowed{border-left-color:#999}
ol.steps li.edge{font-weight:500}.badge{font-size:11px;padding:0 5px;border-radius:3px;
background:#eee;margin-left:6px}.limit{color:#666;font-style:italic}
"""

_EDGE_LABELS = ("ww", "wr", "rw", "process", "realtime")


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """A table whose cells are already-escaped HTML fragments (header text is escaped here)."""
    attr = f' class="{cls}"' if cls else ""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(rows_cells) + "</tr>" for rows_cells in rows)
    return f"<table{attr}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: object, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{_e(value)}</td>"


def _num(value: int | float) -> str:
    return _td(value if isinstance(value, int) else _fmt(value), "num")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.3f}"


def _summary_section(
    history: History, result: CheckResult, summary: Mapping[str, object], span_ns: int
) -> str:
    counts = outcome_counts(history)
    rows: list[tuple[str, object]] = [(str(k), _summary_value(v)) for k, v in summary.items()]
    kinds = _kind_counts(result.anomalies)
    computed: list[tuple[str, object]] = [
        ("history span (s)", _seconds(span_ns)),
        ("events", len(history.ops)),
        ("ok", counts["ok"]),
        ("fail", counts["fail"]),
        ("info", counts["info"]),
        ("pending", counts["pending"]),
        ("anomalies", ", ".join(f"{k} ({n})" for k, n in kinds.items()) or "none"),
        ("checker", f"{result.checker or 'check'} (model: {result.model})"),
    ]
    given = set(summary)
    rows += [(k, v) for k, v in computed if k not in given]
    return _table(("field", "value"), ([_td(k), _td(v)] for k, v in rows), "summary")


def _summary_value(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, Iterable):
        return ", ".join(str(v) for v in value)
    return value


def _verdict_section(result: CheckResult) -> str:
    rows = []
    for model in MODELS:
        holds = result.verdict.get(model)
        text, cls = (
            ("not checked", "")
            if holds is None
            else ("holds", "holds")
            if holds
            else ("violated", "violated")
        )
        asked = " (asked)" if model == result.model else ""
        rows.append([_td(model + asked), _td(text, cls)])
    return _table(("consistency model", "verdict"), rows)


def _outcomes_section(history: History) -> str:
    per: dict[str, Counter[str]] = {}
    for op in history.ops:
        if op.type == "invoke":
            if history.completion(op) is None:
                per.setdefault(op.f, Counter())["pending"] += 1
        else:
            per.setdefault(op.f, Counter())[op.type] += 1
    if not per:
        return "<p>The history is empty.</p>"
    cols = (*COMPLETION_TYPES, "pending")
    rows = []
    total: Counter[str] = Counter()
    for f in sorted(per):
        c = per[f]
        total.update(c)
        rows.append([_td(f), *(_num(c[t]) for t in cols), _num(sum(c.values()))])
    rows.append(["<td><b>all</b></td>", *(_num(total[t]) for t in cols), _num(sum(total.values()))])
    return _table(("f", *cols, "total"), rows)


def _faults_section(faults: Sequence[FaultWindow], t0: int, colours: Mapping[str, str]) -> str:
    if not faults:
        return "<p>No faults were injected.</p>"
    ordered = sorted(faults, key=lambda f: (f.start_ns, f.end_ns, f.kind))
    shown = ordered[:MAX_FAULTS_LISTED]
    rows = [
        [
            f"<td>{_swatch(colours[f.kind], f.kind, area=True)}</td>",
            _td(f.target),
            _td(_seconds(f.start_ns - t0), "num"),
            _td(_seconds(f.end_ns - t0), "num"),
            _td(_seconds(f.end_ns - f.start_ns), "num"),
        ]
        for f in shown
    ]
    out = _table(("kind", "target", "start (s)", "end (s)", "duration (s)"), rows, "faults")
    if len(ordered) > len(shown):
        out += (
            f'<p class="limit">Showing the first {len(shown)} of {len(ordered)} fault windows '
            f"(limit MAX_FAULTS_LISTED = {MAX_FAULTS_LISTED}).</p>"
        )
    return out


def _failover_section(failover: Sequence[Unavailability], t0: int) -> str:
    if not failover:
        return ""
    rows = []
    for entry in failover:
        fault, longest = entry.fault, entry.longest
        gaps = ", ".join(
            f"p{g.partition} {g.seconds:.2f}"
            + ("" if g.recovered else " (not recovered)")
            + (" (since an earlier fault)" if g.earlier else "")
            for g in entry.gaps
        )
        rows.append(
            [
                _td(fault.kind),
                _td(fault.target),
                _td(_seconds(fault.start_ns - t0), "num"),
                _td(_seconds(fault.end_ns - fault.start_ns), "num"),
                _td(", ".join(str(p) for p in fault.partitions)),
                _td("—" if longest is None else f"{longest.seconds:.3f}", "num"),
                _td(gaps or "none written by the workload"),
            ]
        )
    head = (
        "kind",
        "target",
        "start (s)",
        "window (s)",
        "partitions hit",
        "longest without a commit (s)",
        "per partition (s)",
    )
    return (
        "<h2>Failover</h2><p>Per leader fault: the partitions its target led, and the longest "
        "time each went without an acknowledged write, from the fault's start (or the last "
        "acknowledgement after it) to the next acknowledgement.</p>"
        + _table(head, rows, "failover")
    )


def _failures_section(
    history: History,
    faults: Sequence[FaultWindow],
    t0: int,
    x_max_s: float,
    colours: Mapping[str, str],
) -> str:
    split = failure_split(history, faults)
    by_code: dict[str, dict[str, int]] = split["by_code"]
    if not by_code:
        return "<p>No operation failed.</p>"
    bucket = int(split["bucket_ns"])
    rows = [
        [
            f"<td><code>{_e(code)}</code></td>",
            *(_num(c[f]) for f in ("fail", "info", "during_faults", "outside_faults")),
        ]
        for code, c in by_code.items()
    ]
    table = _table(("code", "fail", "info", "during faults", "outside faults"), rows, "failures")
    series = failure_series(history, faults, bucket)
    per_s = 1e9 / bucket
    lines = [
        _Line(
            code,
            _FAULT_PALETTE[(i + 3) % len(_FAULT_PALETTE)] if i else _TYPE_COLOURS["fail"],
            [((b.start_ns + bucket / 2) / 1e9, b.codes.get(code, 0) * per_s) for b in series],
        )
        for i, code in enumerate(list(by_code)[:MAX_FAILURE_CODES_PLOTTED])
    ]
    plot = _svg_plot(
        label="failures by code over time",
        lines=lines,
        y_label="failures/s",
        log_y=False,
        x_max_s=x_max_s,
        faults=faults,
        t0=t0,
        colours=colours,
    )
    intro = (
        "<p>Every <code>fail</code> and <code>info</code> by code (a cancellation with its "
        "per-op reasons). <em>During faults</em>: the op's interval overlaps a fault window. "
        "Conflicts and failed conditions outside the windows are contention; "
        "<code>Unavailable</code> and <code>OutcomeUnknown</code> inside them are faults.</p>"
    )
    more = (
        f'<p class="limit">The plot shows the {MAX_FAILURE_CODES_PLOTTED} most frequent codes '
        f"(limit MAX_FAILURE_CODES_PLOTTED).</p>"
        if len(by_code) > MAX_FAILURE_CODES_PLOTTED
        else ""
    )
    return (
        intro
        + table
        + f"<p>Failures per second by code, in buckets of {_e(_fmt(bucket / 1e9))} s of "
        "completion time (no wider than the shortest fault window).</p>"
        + plot
        + _legends(lines, colours)
        + more
    )


def _choose_anomalies(result: CheckResult) -> list[Anomaly]:
    ordered = sorted(result.anomalies, key=lambda a: not prohibits(result.model, a.kind))
    per_kind: Counter[str] = Counter()
    chosen: list[Anomaly] = []
    for a in ordered:
        if len(chosen) >= MAX_ANOMALIES_SHOWN:
            break
        if per_kind[a.kind] < MAX_ANOMALIES_PER_KIND:
            per_kind[a.kind] += 1
            chosen.append(a)
    return chosen


def _step_item(line: str) -> str:
    text = line.strip()
    label = next((lb for lb in _EDGE_LABELS if text.endswith(f"({lb})")), None)
    if label is not None:
        return f'<li class="edge">{_e(text)}<span class="badge">{_e(label)} edge</span></li>'
    return f"<li>{_e(text)}</li>"


def _anomaly_html(number: int, a: Anomaly, result: CheckResult, invokes: Mapping[int, Op]) -> str:
    prohibited = prohibits(result.model, a.kind)
    cls = "anomaly" if prohibited else "anomaly allowed"
    status = f"prohibited by {result.model}" if prohibited else f"allowed by {result.model}"
    out = [f'<section class="{cls}"><h3>#{number} {_e(a.kind)} <small>({_e(status)})</small></h3>']
    steps = _steps(a.explanation)
    shown = steps[:MAX_EXPLANATION_LINES]
    out.append('<ol class="steps">' + "".join(_step_item(s) for s in shown) + "</ol>")
    if len(steps) > len(shown):
        out.append(
            f'<p class="limit">Explanation cut to {len(shown)} of {len(steps)} lines '
            f"(limit MAX_EXPLANATION_LINES = {MAX_EXPLANATION_LINES}).</p>"
        )
    if a.ops:
        ops = a.ops[:MAX_OPS_PER_ANOMALY]
        items = []
        for op in ops:
            inv = invokes.get(op.index)
            when = (
                ""
                if inv is None
                else f", invoked as op {inv.index}, latency "
                f"{(op.time_ns - inv.time_ns) / 1e6:.3f} ms"
            )
            ts = "" if op.ts is None else f", ts {'.'.join(map(str, op.ts))}"
            items.append(
                f"<li><b>op {op.index}</b> ({_e(op.type)}{_e(when)}{_e(ts)}): "
                f"process {op.process}, f <code>{_e(op.f)}</code>, value "
                f"<code>{_e(_short(op.value))}</code></li>"
            )
        out.append('<p>Ops involved:</p><ul class="ops">' + "".join(items) + "</ul>")
        if len(a.ops) > len(ops):
            out.append(
                f'<p class="limit">Showing {len(ops)} of {len(a.ops)} ops '
                f"(limit MAX_OPS_PER_ANOMALY = {MAX_OPS_PER_ANOMALY}).</p>"
            )
    out.append("</section>")
    return "".join(out)


def _anomalies_section(history: History, result: CheckResult) -> str:
    if not result.anomalies:
        return "<p>No anomalies found.</p>"
    kinds = _kind_counts(result.anomalies)
    rows = [
        [_td(k), _num(n), _td("prohibited" if prohibits(result.model, k) else "allowed")]
        for k, n in kinds.items()
    ]
    out = [_table(("anomaly", "count", f"under {result.model}"), rows, "anomaly-counts")]
    chosen = _choose_anomalies(result)
    if len(chosen) < len(result.anomalies):
        out.append(
            f'<p class="limit">Showing {len(chosen)} of {len(result.anomalies)} anomalies '
            f"(limits MAX_ANOMALIES_PER_KIND = {MAX_ANOMALIES_PER_KIND}, "
            f"MAX_ANOMALIES_SHOWN = {MAX_ANOMALIES_SHOWN}; prohibited kinds first).</p>"
        )
    invokes = {done.index: inv for inv, done in history.pairs()}
    out += [_anomaly_html(i + 1, a, result, invokes) for i, a in enumerate(chosen)]
    return "".join(out)


def render_html(
    *,
    title: str,
    history: History,
    result: CheckResult,
    faults: Sequence[FaultWindow],
    summary: Mapping[str, object],
    bucket_ns: int | None = None,
    checked: History | None = None,
    failover: Sequence[Unavailability] = (),
) -> str:
    """The whole ``report.html`` as a string (see :func:`write_report`)."""
    t0 = origin_ns(history)
    end = max([op.time_ns for op in history.ops[-1:]] + [f.end_ns for f in faults], default=t0)
    span_ns = max(0, end - t0)
    bucket = bucket_ns if bucket_ns is not None else auto_bucket_ns(span_ns)
    _check_bucket(bucket)
    x_max_s = max(span_ns, bucket) / 1e9
    colours = _fault_colours(faults)
    workload = str(summary.get("workload", result.checker or "check"))

    tput = throughput_series(history, bucket)
    per_s = 1e9 / bucket
    t_lines = [
        _Line(
            f"{t} ops/s",
            _TYPE_COLOURS[t],
            [((b.start_ns + bucket / 2) / 1e9, getattr(b, t) * per_s) for b in tput],
        )
        for t in COMPLETION_TYPES
        if t == "ok" or any(getattr(b, t) for b in tput)
    ]
    lat = latency_series(history, bucket)
    l_lines = []
    for t in COMPLETION_TYPES:
        mine = [b for b in lat if b.type == t]
        if not mine:
            continue
        mid = [(b.start_ns + bucket / 2) / 1e9 for b in mine]
        l_lines.append(
            _Line(
                f"{t} p50",
                _TYPE_COLOURS[t],
                [(x, b.p50_ms) for x, b in zip(mid, mine, strict=True)],
                True,
            )
        )
        l_lines.append(
            _Line(
                f"{t} p99",
                _TYPE_COLOURS[t],
                [(x, b.p99_ms) for x, b in zip(mid, mine, strict=True)],
            )
        )
    tput_svg = _svg_plot(
        label="throughput over time",
        lines=t_lines,
        y_label="ops/s",
        log_y=False,
        x_max_s=x_max_s,
        faults=faults,
        t0=t0,
        colours=colours,
    )
    lat_svg = _svg_plot(
        label="latency over time",
        lines=l_lines,
        y_label="latency (ms, log)",
        log_y=True,
        x_max_s=x_max_s,
        faults=faults,
        t0=t0,
        colours=colours,
    )
    bucket_text = f"{_fmt(bucket / 1e9)} s"

    verdict = "PASS" if result.valid else "FAIL"
    if result.valid:
        why = f"{result.model} holds"
    elif result.unknown:
        why = f"{result.model} could not be decided (search incomplete)"
    else:
        bad = sorted(k for k in result.kinds() if prohibits(result.model, k))
        why = f"{result.model} violated: " + ", ".join(bad)
    notes = (
        "<h2>Checker notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in result.notes) + "</ul>"
        if result.notes
        else ""
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="banner {verdict.lower()}">{verdict} — {_e(why)}</div>',
        f'<p class="verdict-line">{_e(verdict_line(workload, history, result))}</p>',
        "<h2>Summary</h2>",
        _summary_section(history, result, summary, span_ns),
        "<h2>Verdict by consistency model</h2>",
        _verdict_section(result),
        f"<h2>Throughput</h2><p>Completions per second, in buckets of {_e(bucket_text)} "
        "of completion time.</p>",
        tput_svg,
        _legends(t_lines, colours),
        f"<h2>Latency</h2><p>p50 (dashed) and p99 (solid) of completion minus invoke time, per "
        f"completion type, in buckets of {_e(bucket_text)} of invoke time.</p>",
        lat_svg,
        _legends(l_lines, colours),
        "<h2>Outcomes by operation</h2>",
        _outcomes_section(history),
        "<h2>Failures by code: contention or faults</h2>",
        _failures_section(history, faults, t0, x_max_s, colours),
        "<h2>Fault windows</h2>",
        _faults_section(faults, t0, colours),
        _failover_section(failover, t0),
        "<h2>Anomalies</h2>",
        _anomalies_section(checked or history, result),
        notes,
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(
    out_dir: Path,
    *,
    title: str,
    history: History,
    result: CheckResult,
    faults: Sequence[FaultWindow],
    summary: Mapping[str, object],
    bucket_ns: int | None = None,
    checked: History | None = None,
    failover: Sequence[Unavailability] = (),
) -> Path:
    """Write ``out_dir/report.html``, ``out_dir/results.json`` and ``out_dir/report.txt``;
    return the HTML path.

    ``bucket_ns`` is the plots' bucket width (default: :func:`auto_bucket_ns` of the run's span;
    the failure timeline has its own, :func:`failure_bucket_ns`). ``checked`` is the history
    the checkers saw when it differs from ``history`` (their anomalies' op indexes refer to it).
    ``failover`` are a replicated run's measured leader faults (:mod:`chaos.failover`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = results_json(
        title=title,
        history=history,
        result=result,
        faults=faults,
        summary=summary,
        failover=failover,
    )
    (out_dir / "results.json").write_text(
        json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    page = render_html(
        title=title,
        history=history,
        result=result,
        faults=faults,
        summary=summary,
        bucket_ns=bucket_ns,
        checked=checked,
        failover=failover,
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    (out_dir / "report.txt").write_text(
        report_text(
            title=title,
            history=history,
            result=result,
            faults=faults,
            summary=summary,
            failover=failover,
        ),
        encoding="utf-8",
    )
    return path


def report_text(
    *,
    title: str,
    history: History,
    result: CheckResult,
    faults: Sequence[FaultWindow],
    summary: Mapping[str, object],
    failover: Sequence[Unavailability] = (),
) -> str:
    """``report.txt``: verdict, outcomes by operation (and by kind when the summary has
    ``kinds``), fault counts, the failover figures of a replicated run, the failure split and
    its timeline, anomaly counts, notes."""
    workload = str(summary.get("workload", result.checker or "check"))
    lines = [title, verdict_line(workload, history, result), "", "outcomes by f:"]
    per: dict[str, Counter[str]] = {}
    for op in history.ops:
        if op.type != "invoke":
            per.setdefault(op.f, Counter())[op.type] += 1
    for f, c in sorted(per.items()):
        lines.append(f"  {f:<16} " + "  ".join(f"{t} {c[t]}" for t in COMPLETION_TYPES))
    kinds = summary.get("kinds")
    if isinstance(kinds, Mapping):
        lines.append("outcomes by kind:")
        for kind, c in kinds.items():
            counts = c if isinstance(c, Mapping) else {}
            lines.append(
                f"  {kind:<16} " + "  ".join(f"{t} {counts.get(t, 0)}" for t in COMPLETION_TYPES)
            )
    fault_counts = Counter(f.kind for f in faults)
    lines.append(
        "faults: " + (", ".join(f"{k} {n}" for k, n in sorted(fault_counts.items())) or "none")
    )
    if failover:
        lines.append(failover_text(failover, origin_ns(history)).rstrip("\n"))
    lines.append("")
    lines.append(failures_text(history, faults).rstrip("\n"))
    kinds_found = _kind_counts(result.anomalies)
    lines.append("")
    lines.append(
        "anomalies: " + (", ".join(f"{k} ({n})" for k, n in kinds_found.items()) or "none")
    )
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"
