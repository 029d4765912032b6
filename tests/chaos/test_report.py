"""The run report: series numbers, verdict line, results.json and a well-formed, escaped HTML."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from chaos.checkers import check_all
from chaos.checkers.result import Anomaly, CheckResult, make_result
from chaos.history import History, Op
from chaos.report import (
    FAILURE_BUCKET_CAP_NS,
    FAILURE_BUCKET_FLOOR_NS,
    MAX_ANOMALIES_PER_KIND,
    MAX_OPS_PER_ANOMALY,
    FaultWindow,
    LatencyBucket,
    ThroughputBucket,
    auto_bucket_ns,
    failure_bucket_ns,
    failure_series,
    failure_split,
    failures_text,
    latency_series,
    origin_ns,
    outcome_counts,
    render_html,
    throughput_series,
    verdict_line,
    write_report,
)

if TYPE_CHECKING:
    from conftest import Builder

S = 1_000_000_000
MS = 1_000_000
T0 = 7 * S  # histories do not start at zero: everything is relative to the first event

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "area", "base", "source"}


class StrictParser(HTMLParser):
    """Fails on mis-nested or unclosed tags; records tags, classes and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.classes: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def _seen(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        self.classes += [v or "" for k, v in attrs if k == "class"]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._seen(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._seen(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    return parser


def small_history() -> History:
    """Three processes; ok, fail and info completions; times in seconds after T0."""
    h = History()
    a = h.invoke(0, "read", None, time_ns=T0)  # 0
    b = h.invoke(1, "txn", [["append", "x", 1]], time_ns=T0 + 100 * MS)  # 1
    h.complete(a, "ok", 5, time_ns=T0 + 500 * MS)  # 2: 500 ms, completes in bucket 0
    c = h.invoke(0, "read", None, time_ns=T0 + 600 * MS)  # 3
    h.complete(b, "fail", time_ns=T0 + 1200 * MS, error="conflict")  # 4: 1100 ms, bucket 1
    h.complete(c, "info", time_ns=T0 + 1300 * MS, error="timeout")  # 5: 700 ms, bucket 1
    d = h.invoke(2, "txn", [["append", "y", 2]], time_ns=T0 + 2500 * MS)  # 6
    h.complete(d, "ok", time_ns=T0 + 3000 * MS)  # 7: 500 ms, bucket 3
    return h


FAULTS = [
    FaultWindow(T0 + 200 * MS, T0 + 900 * MS, "partition", "n1 | n2 n3"),
    FaultWindow(T0 + 1500 * MS, T0 + 2 * S, "kill", "n2"),
]
SUMMARY: dict[str, object] = {
    "workload": "list-append",
    "nemeses": ["partition", "kill"],
    "seed": 42,
    "duration": "3 s",
    "clients": 3,
}


def g1c_result(build: Builder) -> tuple[History, CheckResult]:
    history = build.concurrent(
        [["append", "x", 1], ["r", "y", [1]]],
        [["append", "x", 2], ["append", "y", 1]],
        [["r", "x", [1, 2]]],
    )
    return history, check_all(history, "list-append")


# -- numbers ------------------------------------------------------------------------------------


def test_throughput_series_counts_completions_per_bucket() -> None:
    h = small_history()
    assert origin_ns(h) == T0
    assert throughput_series(h, S) == [
        ThroughputBucket(0, 1, 0, 0),
        ThroughputBucket(S, 0, 1, 1),
        ThroughputBucket(2 * S, 0, 0, 0),  # empty buckets are kept: the line drops to zero
        ThroughputBucket(3 * S, 1, 0, 0),
    ]
    assert sum(b.total() for b in throughput_series(h, 250 * MS)) == 4
    assert throughput_series(History(), S) == []
    with pytest.raises(ValueError):
        throughput_series(h, 0)


def test_latency_series_per_invoke_bucket_and_type() -> None:
    assert latency_series(small_history(), S) == [
        LatencyBucket(0, "ok", 1, 500.0, 500.0, 500.0),
        LatencyBucket(0, "fail", 1, 1100.0, 1100.0, 1100.0),
        LatencyBucket(0, "info", 1, 700.0, 700.0, 700.0),
        LatencyBucket(2 * S, "ok", 1, 500.0, 500.0, 500.0),
    ]


def test_latency_percentiles_are_nearest_rank() -> None:
    h = History()
    now = 0
    for i in range(1, 101):  # latencies 1..100 ms, in shuffled order of magnitude
        inv = h.invoke(0, "read", None, time_ns=now)
        now += ((i * 37) % 100 + 1) * MS
        h.complete(inv, "ok", time_ns=now)
    (bucket,) = latency_series(h, 10**12)
    assert bucket == LatencyBucket(0, "ok", 100, 50.0, 99.0, 100.0)


def test_outcome_counts_and_pending() -> None:
    h = small_history()
    assert outcome_counts(h) == {"ok": 2, "fail": 1, "info": 1, "pending": 0}
    h.invoke(5, "read", None, time_ns=T0 + 4 * S)
    assert outcome_counts(h)["pending"] == 1


def test_auto_bucket_and_fault_window_checks() -> None:
    assert auto_bucket_ns(60 * S) == S
    assert auto_bucket_ns(120 * S) == 2 * S
    assert auto_bucket_ns(0) == 1000
    with pytest.raises(ValueError):
        FaultWindow(10, 5, "kill", "n1")


# -- verdict line -------------------------------------------------------------------------------


def _window(start_ms: int, length_ms: int, kind: str = "kill") -> FaultWindow:
    return FaultWindow(T0 + start_ms * MS, T0 + (start_ms + length_ms) * MS, kind, "n1")


@pytest.mark.parametrize(
    ("lengths_ms", "bucket_ns"),
    [
        ([], FAILURE_BUCKET_CAP_NS),  # no faults: the cap
        ([3000, 2500], FAILURE_BUCKET_CAP_NS),  # every window longer than the cap
        ([3000, 730, 1200], 500 * MS),  # the shortest window, rounded down to 1-2-5
        ([2000, 200], 200 * MS),
        ([999], 500 * MS),
        ([0, 1000], FAILURE_BUCKET_CAP_NS),  # an empty window is ignored
        ([1, 1000], FAILURE_BUCKET_FLOOR_NS),  # never below the floor
    ],
)
def test_failure_buckets_are_no_wider_than_the_shortest_window(
    lengths_ms: list[int], bucket_ns: int
) -> None:
    faults = [_window(10_000 * i, n) for i, n in enumerate(lengths_ms)]
    assert failure_bucket_ns(faults) == bucket_ns
    shortest = min((f.end_ns - f.start_ns for f in faults if f.end_ns > f.start_ns), default=None)
    if shortest is not None and shortest >= FAILURE_BUCKET_FLOOR_NS:
        assert bucket_ns <= shortest
    assert failure_bucket_ns(faults, cap_ns=100 * MS) == min(bucket_ns, 100 * MS)
    with pytest.raises(ValueError, match="positive"):
        failure_bucket_ns(faults, cap_ns=0)


def _failures_history() -> History:
    """Contention outside the window, faults inside it, and a cancellation's reasons."""
    h = History()

    def op(process: int, start_ms: int, end_ms: int, type_: str, error: str | None, **kw: object):
        inv = h.invoke(process, "txn", [["append", "x", process]], time_ns=T0 + start_ms * MS)
        h.complete(inv, type_, time_ns=T0 + end_ms * MS, error=error, **kw)  # type: ignore[arg-type]

    op(0, 0, 100, "ok", None)
    op(1, 100, 200, "fail", "TransactionCanceled", reasons=["None", "ConditionFailed"])
    op(2, 200, 250, "fail", "TransactionConflict")
    op(3, 1000, 1100, "fail", "Unavailable")  # inside the window [1000, 1500]
    op(4, 1200, 1400, "info", "OutcomeUnknown")
    op(5, 1400, 1600, "fail", "Unavailable")  # begins inside, ends after: during
    op(6, 2000, 2100, "fail", "TransactionConflict")
    return h


def test_failure_split_tells_contention_from_faults() -> None:
    h = _failures_history()
    faults = [_window(1000, 500)]
    split = failure_split(h, faults)
    assert split["bucket_ns"] == 500 * MS
    assert split["by_code"] == {
        "Unavailable": {"fail": 2, "info": 0, "during_faults": 2, "outside_faults": 0},
        "TransactionConflict": {"fail": 2, "info": 0, "during_faults": 0, "outside_faults": 2},
        "OutcomeUnknown": {"fail": 0, "info": 1, "during_faults": 1, "outside_faults": 0},
        "TransactionCanceled(ConditionFailed)": {
            "fail": 1,
            "info": 0,
            "during_faults": 0,
            "outside_faults": 1,
        },
    }
    series = failure_series(h, faults, 500 * MS)
    assert [b.start_ns for b in series] == [0, 500 * MS, 1000 * MS, 1500 * MS, 2000 * MS]
    assert [b.faults for b in series] == [(), (), ("kill",), ("kill",), ()]
    assert series[0].codes == {
        "TransactionCanceled(ConditionFailed)": 1,
        "TransactionConflict": 1,
    }
    assert series[1].codes == {}
    assert series[2].codes == {"OutcomeUnknown": 1, "Unavailable": 1}
    assert series[3].codes == {"Unavailable": 1}
    assert series[4].codes == {"TransactionConflict": 1}
    # The JSON series keeps the buckets with failures or faults only.
    assert [row["start_s"] for row in split["series"]] == [0.0, 1.0, 1.5, 2.0]
    text = failures_text(h, faults)
    assert "Unavailable" in text and "buckets of 0.5 s" in text
    assert "   1.000 s [kill]" in text
    assert failures_text(History(), []).startswith("failures by code: none")


def test_verdict_line_pass_and_fail(build: Builder) -> None:
    h = small_history()
    assert verdict_line("list-append", h, make_result("list-append", [])) == (
        "list-append: 4 ops (ok 2, fail 1, info 1), anomalies: none — PASS"
    )
    history, result = g1c_result(build)
    assert not result.valid
    assert verdict_line("list-append", history, result) == (
        "list-append: 3 ops (ok 3, fail 0, info 0), anomalies: G1c (1) — FAIL"
    )


def test_verdict_line_lists_allowed_anomalies_but_passes(build: Builder) -> None:
    build.txn([["append", "x", 1]])
    build.txn([["r", "x", []]])  # a stale read after the append completed: G-single-realtime
    result = check_all(build.history, "list-append", "serializable")
    assert result.valid and result.kinds() == {"G-single-realtime"}
    line = verdict_line("list-append", build.history, result)
    assert line.endswith("anomalies: G-single-realtime (1) — PASS")


# -- files ------------------------------------------------------------------------------------


def test_valid_report(tmp_path: Path) -> None:
    h = small_history()
    result = make_result("list-append", [])
    path = write_report(
        tmp_path / "run", title="nightly", history=h, result=result, faults=FAULTS, summary=SUMMARY
    )
    assert path == tmp_path / "run" / "report.html"
    page = path.read_text(encoding="utf-8")
    parsed = parse(page)
    assert parsed.tags.count("svg") == 3  # throughput, latency, failures by code
    assert "polyline" in parsed.tags
    assert "script" not in parsed.tags
    assert "banner pass" in parsed.classes
    text = " ".join(parsed.text)
    assert "PASS" in text and "No anomalies found." in text
    # Summary rows from the caller and the computed ones.
    for needle in (
        "workload",
        "list-append",
        "nemeses",
        "partition, kill",
        "seed",
        "42",
        "clients",
    ):
        assert needle in text
    assert "list-append: 4 ops (ok 2, fail 1, info 1), anomalies: none — PASS" in text
    # Fault windows: shaded in every plot, one colour per kind, a legend under each plot.
    fault_rects = re.findall(r'<rect class="fault"[^>]*fill="(#[0-9a-f]{6})"', page)
    assert len(fault_rects) == 6 and len(set(fault_rects)) == 2
    legends = re.findall(r'<div class="legend fault-legend">(.*?)</div>', page)
    assert len(legends) == 3 and all("partition" in g and "kill" in g for g in legends)
    # Failures by code: the fail (conflict) and the info (timeout) both overlap the partition.
    assert re.search(
        r"<td><code>conflict</code></td><td[^>]*>1</td><td[^>]*>0</td><td[^>]*>1</td>"
        r"<td[^>]*>0</td>",
        page,
    )
    assert "n1 | n2 n3" in text  # fault list
    # Outcome table by f: read has ok 1 + info 1, txn has ok 1 + fail 1.
    assert re.search(r"<td>read</td><td[^>]*>1</td><td[^>]*>0</td><td[^>]*>1</td>", page)
    assert re.search(r"<td>txn</td><td[^>]*>1</td><td[^>]*>1</td><td[^>]*>0</td>", page)
    # Self-contained: nothing is fetched.
    assert not any(k in ("src", "href") for k, _ in parsed.attrs)
    assert "<link" not in page and "url(" not in page and "@import" not in page

    data = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert data["valid"] is True
    assert data["anomaly_kinds"] == [] and data["anomaly_counts"] == {}
    assert data["counts"] == {"ok": 2, "fail": 1, "info": 1, "pending": 0}
    assert data["summary"] == {**SUMMARY, "nemeses": ["partition", "kill"]}
    assert data["faults"][0] == {
        "kind": "partition",
        "target": "n1 | n2 n3",
        "start_ns": T0 + 200 * MS,
        "end_ns": T0 + 900 * MS,
    }
    assert data["verdict_line"].endswith("— PASS")
    # The shortest window is 500 ms: the failure buckets are 500 ms wide.
    assert data["failures"]["bucket_ns"] == 500 * MS
    assert data["failures"]["by_code"] == {
        "conflict": {"fail": 1, "info": 0, "during_faults": 1, "outside_faults": 0},
        "timeout": {"fail": 0, "info": 1, "during_faults": 1, "outside_faults": 0},
    }
    text_report = (tmp_path / "run" / "report.txt").read_text(encoding="utf-8")
    assert text_report.splitlines()[1].endswith("— PASS")
    assert "failures by code" in text_report and "conflict" in text_report


def test_anomalous_report_explains_the_cycle(build: Builder, tmp_path: Path) -> None:
    history, result = g1c_result(build)
    summary = {**SUMMARY, "out": tmp_path}  # non-JSON values are written as strings
    path = write_report(
        tmp_path, title="g1c", history=history, result=result, faults=[], summary=summary
    )
    page = path.read_text(encoding="utf-8")
    parsed = parse(page)
    assert "banner fail" in parsed.classes
    text = " ".join(parsed.text)
    assert "FAIL" in text and "serializable violated: G1c" in text
    assert "none injected" in text and "No faults were injected." in text
    (anomaly,) = result.anomalies
    # Every explanation step is a list item; edges are marked with their label.
    steps = re.findall(r'<ol class="steps">(.*?)</ol>', page)
    assert len(steps) == 1
    assert steps[0].count("<li") == len(anomaly.explanation.splitlines())
    assert "ww edge" in steps[0] and "wr edge" in steps[0]
    assert "so the cycle T1 -&gt; T2 -&gt; T1" in steps[0]
    # The ops involved: index, process, f and value.
    ops = re.findall(r'<ul class="ops">(.*?)</ul>', page)[0]
    for op in anomaly.ops:
        assert f"<b>op {op.index}</b>" in ops
        assert f"process {op.process}" in ops
    assert "<code>txn</code>" in ops and "[[&quot;append&quot;, &quot;x&quot;, 1]" in ops

    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert data["valid"] is False
    assert data["anomaly_kinds"] == ["G1c"] and data["anomaly_counts"] == {"G1c": 1}
    (entry,) = data["anomalies"]
    assert entry["kind"] == "G1c" and entry["prohibited"] is True
    assert entry["explanation"] == anomaly.explanation
    assert entry["steps"][-1].strip().startswith("T2 = op")
    assert entry["op_indexes"] == [op.index for op in anomaly.ops]
    assert data["summary"]["out"] == str(tmp_path)
    assert data["verdict"]["serializable"] is False


def test_limits_are_applied_and_named() -> None:
    h = small_history()
    op = h.ops[2]
    many_ops = tuple(Op(i, "ok", 0, op.time_ns, "read", i) for i in range(MAX_OPS_PER_ANOMALY + 3))
    anomalies = [Anomaly("G0", f"cycle number {i}", many_ops) for i in range(30)]
    anomalies.append(Anomaly("G-single-realtime", "allowed under serializable", (op,)))
    result = make_result("list-append", anomalies)
    page = render_html(title="t", history=h, result=result, faults=(), summary={})
    parse(page)
    assert page.count('<section class="anomaly">') == MAX_ANOMALIES_PER_KIND
    assert page.count('<section class="anomaly allowed">') == 1
    assert f"Showing {MAX_ANOMALIES_PER_KIND + 1} of 31 anomalies" in page
    assert "MAX_ANOMALIES_PER_KIND" in page and "MAX_OPS_PER_ANOMALY" in page
    assert f"Showing {MAX_OPS_PER_ANOMALY} of {MAX_OPS_PER_ANOMALY + 3} ops" in page
    assert "G0 (30), G-single-realtime (1)" in page or "G-single-realtime (1), G0 (30)" in page


def test_everything_is_escaped(tmp_path: Path) -> None:
    h = History()
    inv = h.invoke(0, "<script>f", "</td><script>alert(1)</script>", time_ns=0)
    h.complete(inv, "ok", time_ns=MS)
    evil = "<script>alert('x')</script>"
    result = make_result("list-append", [Anomaly("G0", f"step {evil}\n  T1 = {evil}", (h.ops[1],))])
    path = write_report(
        tmp_path,
        title=f"title {evil}",
        history=h,
        result=result,
        faults=[FaultWindow(0, MS, f"kind{evil}", f"target{evil}")],
        summary={f"key{evil}": evil, "workload": evil},
        bucket_ns=MS // 4,
    )
    page = path.read_text(encoding="utf-8")
    parsed = parse(page)
    assert "<script" not in page.lower()
    assert "script" not in parsed.tags
    assert "&lt;script&gt;" in page
    assert any(evil in t for t in parsed.text)  # the text survives, as text
    assert json.loads((tmp_path / "results.json").read_text())["title"] == f"title {evil}"


def test_empty_history_still_renders(tmp_path: Path) -> None:
    path = write_report(
        tmp_path,
        title="empty",
        history=History(),
        result=make_result("bank", []),
        faults=[],
        summary={"workload": "bank"},
    )
    parse(path.read_text(encoding="utf-8"))
    assert "The history is empty." in path.read_text(encoding="utf-8")
