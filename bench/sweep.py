"""Throughput against client count, for both systems: the plot in docs/bench.md.

Run: ``.venv/bin/python bench/sweep.py [--workloads transfer,get,put] [--clients 1,4,16,32,64]
[--duration 10] [--out docs/bench]``

Theory of operation
-------------------
Runs ``kvctl bench --workload W --clients C --duration D --compare-postgres --json`` once per
workload and client count (each run starts a fresh temporary cluster and PostgreSQL server and
removes them), appends every result to ``<out>/sweep.json`` as it arrives (a stopped sweep keeps
what it measured), and draws ``<out>/sweep-<workload>.svg``: transactions per second against
clients, one line per system, both axes log-scaled; ``--plot-only`` redraws the plots from
``sweep.json`` without measuring. Everything runs on loopback and each
run stops by itself; the sweep is bounded by the lists it is given.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

KVCTL = (sys.executable, "-m", "kvstore.cli.kvctl")
RUN_TIMEOUT_S = 900
_W, _H, _ML, _MR, _MT, _MB = 640, 360, 70, 130, 30, 50
_COLOURS = {"kvstore": "#1f77b4", "postgresql": "#d62728"}


def measure(workload: str, clients: int, duration_s: int) -> dict[str, Any]:
    argv = [*KVCTL, "bench", "--workload", workload, "--clients", str(clients)]
    argv += ["--duration", str(duration_s), "--compare-postgres", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kvctl bench failed ({done.returncode}): {done.stderr.strip()}")
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _e(text: object) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plot(workload: str, points: dict[str, list[tuple[int, float]]]) -> str:
    """An SVG line chart of throughput (y, log10: the systems differ by an order of magnitude)
    against clients (x, log2)."""
    xs = sorted({x for series in points.values() for x, _ in series})
    ys = [y for series in points.values() for _, y in series if y > 0] or [1.0]
    y_lo, y_hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    if y_hi == y_lo:
        y_hi += 1
    x_lo = math.log2(xs[0])
    x_hi = math.log2(xs[-1]) if len(xs) > 1 else x_lo + 1
    plot_w, plot_h = _W - _ML - _MR, _H - _MT - _MB

    def px(x: float) -> float:
        return _ML + (math.log2(x) - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return _MT + plot_h - (math.log10(max(y, 10.0**y_lo)) - y_lo) / (y_hi - y_lo) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_ML}" y="18" font-size="14">{_e(workload)}: transactions/s by clients '
        "(log scales)</text>",
    ]
    for exponent in range(y_lo, y_hi + 1):
        for factor in (1, 2, 5):
            y = factor * 10.0**exponent
            if y > 10.0**y_hi:
                break
            parts.append(
                f'<line x1="{_ML}" x2="{_ML + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                f'stroke="{"#ccc" if factor == 1 else "#eee"}"/>'
                f'<text x="{_ML - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:,.0f}</text>'
            )
    for x in xs:
        parts.append(
            f'<text x="{px(x):.1f}" y="{_MT + plot_h + 18}" text-anchor="middle">{x}</text>'
        )
    parts.append(
        f'<text x="{_ML + plot_w / 2}" y="{_H - 10}" text-anchor="middle">concurrent clients</text>'
    )
    for row, (system, series) in enumerate(sorted(points.items())):
        colour = _COLOURS.get(system, "#555")
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(series))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in series:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        ly = _MT + 20 + row * 20
        parts.append(
            f'<line x1="{_W - _MR + 12}" x2="{_W - _MR + 32}" y1="{ly}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="2"/><text x="{_W - _MR + 38}" y="{ly + 4}">'
            f"{_e(system)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def points_of(runs: list[dict[str, Any]], workload: str) -> dict[str, list[tuple[int, float]]]:
    points: dict[str, list[tuple[int, float]]] = {}
    for document in runs:
        if document["workload"] == workload:
            for result in document["results"]:
                points.setdefault(result["system"], []).append(
                    (int(document["clients"]), float(result["throughput_per_s"]))
                )
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workloads", default="transfer,get,put")
    parser.add_argument("--clients", default="1,4,16,32,64")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the plots from <out>/sweep.json"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "sweep.json"
    workloads = args.workloads.split(",")
    runs: list[dict[str, Any]] = json.loads(log.read_text()) if args.plot_only else []
    for workload in [] if args.plot_only else workloads:
        for clients in (int(c) for c in args.clients.split(",")):
            document = measure(workload, clients, args.duration)
            runs.append(document)
            log.write_text(json.dumps(runs, indent=1) + "\n")
            for result in document["results"]:
                print(
                    f"{workload:9} {clients:3} clients {result['system']:10} "
                    f"{result['throughput_per_s']:>9,.0f}/s p50 {result['p50_ms']:.2f} ms "
                    f"p99 {result['p99_ms']:.2f} ms",
                    flush=True,
                )
    for workload in workloads:
        (out / f"sweep-{workload}.svg").write_text(plot(workload, points_of(runs, workload)))


if __name__ == "__main__":
    main()
