"""``kvctl bench``: the store against PostgreSQL on one workload, side by side.

Theory of operation
-------------------
``kvctl bench --workload W [--clients N] [--duration S] [--compare-postgres] [--mode M] [--nodes N]
[--coordinators N]`` creates a fresh temporary local cluster (by default 3 storage nodes, each
coordinating, no standalone coordinator; default partitions and durability), loads the workload's
accounts, runs N callers through the SDK for a warm-up and S measured seconds
(:mod:`kvstore.bench.store`), and stops and removes the cluster. With ``--compare-postgres`` it then
does the same with a temporary PostgreSQL server driven by pgbench (:mod:`kvstore.bench.postgres`);
PostgreSQL's binaries are looked up first, so a missing installation is reported (with the command
that installs it) before anything runs.

SIGTERM is taken like Ctrl-C: the temporary cluster and server are removed either way. The two
systems never run at the same time: on a small machine each gets the whole CPU. Transfer workloads
end with a check that money was conserved in each system (the sum of the balances is unchanged); a
mismatch is a correctness failure and the exit status says so. Output: a table per system (the
store's names the cluster shape and the SDK mode) and a table of ratios (this store over
PostgreSQL), or one JSON document with ``--json``. A progress bar shows on a terminal only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from types import FrameType
from typing import TYPE_CHECKING

import uvloop

from kvstore.bench import postgres, store
from kvstore.bench.results import RunResult
from kvstore.bench.workloads import INITIAL_BALANCE, WORKLOADS, Workload, workload
from kvstore.cli.output import EXIT_FAILURE, EXIT_OK, Output
from kvstore.errors import ValidationError
from kvstore.limits import (
    BENCH_CLIENTS_DEFAULT,
    BENCH_CLIENTS_MAX,
    BENCH_DURATION_S_DEFAULT,
    BENCH_DURATION_S_MAX,
    BENCH_WARMUP_S,
    LOCAL_COORDINATORS_MAX,
    LOCAL_NODES_MAX,
)

if TYPE_CHECKING:
    from kvstore.cli.kvctl import Commands

__all__ = ["register", "ratios"]

_DEFAULT_MODE = "native"  # measured fastest (docs/bench.md)
_NODES_DEFAULT = 3


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``kvctl bench`` to ``commands``."""
    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="benchmark a temporary local cluster, optionally against PostgreSQL",
        description="Run one workload against a fresh temporary local cluster (3 nodes by "
        "default, each coordinating) and, with --compare-postgres, against a temporary "
        "PostgreSQL server driven by pgbench; print a table per system and the ratios.",
    )
    bench.add_argument(
        "--workload",
        required=True,
        choices=sorted(WORKLOADS),
        help="; ".join(f"{w.name}: {w.summary}" for w in WORKLOADS.values()),
    )
    bench.add_argument(
        "--clients",
        type=int,
        default=BENCH_CLIENTS_DEFAULT,
        help=f"concurrent clients (default {BENCH_CLIENTS_DEFAULT}, at most {BENCH_CLIENTS_MAX})",
    )
    bench.add_argument(
        "--duration",
        type=int,
        default=BENCH_DURATION_S_DEFAULT,
        metavar="S",
        help=f"measured seconds, after a {BENCH_WARMUP_S} s warm-up (default "
        f"{BENCH_DURATION_S_DEFAULT}, at most {BENCH_DURATION_S_MAX})",
    )
    bench.add_argument(
        "--compare-postgres", action="store_true", help="also run PostgreSQL (pgbench)"
    )
    bench.add_argument(
        "--mode",
        choices=store.MODES,
        default=_DEFAULT_MODE,
        help=f"the SDK's mode (default {_DEFAULT_MODE}, the faster)",
    )
    bench.add_argument(
        "--nodes",
        type=int,
        default=_NODES_DEFAULT,
        metavar="N",
        help=f"storage nodes (default {_NODES_DEFAULT}, at most {LOCAL_NODES_MAX})",
    )
    bench.add_argument(
        "--coordinators",
        type=int,
        default=0,
        metavar="N",
        help="standalone coordinator processes (default 0; gateway mode then uses the first)",
    )
    bench.add_argument(
        "--replication-factor",
        type=int,
        default=1,
        metavar="N",
        help="replicas per partition (default 1; above 1 starts a private etcd, "
        "docs/replication.md)",
    )
    bench.add_argument("--seed", type=int, help="seed of the store's callers' random draws")
    bench.set_defaults(handler=_bench)


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.clients <= BENCH_CLIENTS_MAX:
        raise ValidationError("--clients", f"must be in 1..{BENCH_CLIENTS_MAX}")
    if not 1 <= args.duration <= BENCH_DURATION_S_MAX:
        raise ValidationError("--duration", f"must be in 1..{BENCH_DURATION_S_MAX} seconds")
    if not 1 <= args.nodes <= LOCAL_NODES_MAX:
        raise ValidationError("--nodes", f"must be in 1..{LOCAL_NODES_MAX}")
    if not 0 <= args.coordinators <= LOCAL_COORDINATORS_MAX:
        raise ValidationError("--coordinators", f"must be in 0..{LOCAL_COORDINATORS_MAX}")
    if not 1 <= args.replication_factor <= args.nodes:
        raise ValidationError("--replication-factor", f"must be in 1..{args.nodes} (--nodes)")


def _interrupted(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise KeyboardInterrupt


def _bench(args: argparse.Namespace, out: Output) -> int:
    _check(args)
    # SIGTERM stops a benchmark like Ctrl-C: the temporary cluster and server are still removed.
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        return _bench_both(args, out)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bench_both(args: argparse.Namespace, out: Output) -> int:
    chosen = workload(args.workload)
    binaries = postgres.find_binaries() if args.compare_postgres else None
    results = [_run_store(chosen, args, out)]
    if binaries is not None:
        results.append(_run_postgres(chosen, binaries, args, out))
    conserved = {result.system: result.detail.get("conserved", "n/a") for result in results}
    if out.json_mode:
        document: dict[str, object] = {
            "workload": chosen.name,
            "summary": chosen.summary,
            "clients": args.clients,
            "duration_s": args.duration,
            "results": [result.to_json() for result in results],
        }
        if len(results) == 2:
            document["ratio"] = ratios(results[0], results[1])
        out.json(document)
    else:
        _print(out, chosen, results)
    broken = [system for system, ok in conserved.items() if ok == "no"]
    if broken:
        return out.error(
            f"money was not conserved in {', '.join(broken)}: a correctness failure",
            status=EXIT_FAILURE,
        )
    return EXIT_OK


def _run_store(chosen: Workload, args: argparse.Namespace, out: Output) -> RunResult:
    with contextlib.ExitStack() as stack:
        with out.spinner("starting a temporary cluster"):
            running = stack.enter_context(
                store.temp_cluster(
                    nodes=args.nodes,
                    coordinators=args.coordinators,
                    replication_factor=args.replication_factor,
                )
            )
        # uvloop, as the store's own processes use: the fastest way to drive the SDK.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_drive_store(running, chosen, args, out))


async def _drive_store(
    running: store.TempCluster, chosen: Workload, args: argparse.Namespace, out: Output
) -> RunResult:
    async with running.connect(args.mode) as kv:
        with out.spinner(f"kvstore: loading {chosen.accounts:,} accounts"):
            await store.load(kv, chosen.accounts)
        with out.progress(f"kvstore {chosen.name}") as progress:
            result = await store.run(
                kv,
                chosen,
                clients=args.clients,
                duration_s=args.duration,
                warmup_s=BENCH_WARMUP_S,
                seed=args.seed,
                progress=progress,
                detail={"client": f"SDK, {args.mode} mode", "cluster": running.shape},
            )
        if chosen.kind == "transfer":
            total = await store.total_balance(kv, chosen.accounts)
            result.detail["conserved"] = _conserved(total, chosen.accounts)
    return result


def _run_postgres(
    chosen: Workload, binaries: postgres.PgBinaries, args: argparse.Namespace, out: Output
) -> RunResult:
    with contextlib.ExitStack() as stack:
        with out.spinner("starting a temporary PostgreSQL server"):
            server = stack.enter_context(
                postgres.TempPostgres(binaries, max_connections=args.clients + 10)
            )
        with out.spinner(f"postgresql: loading {chosen.accounts:,} accounts"):
            server.load(chosen.accounts)
        with out.progress(f"postgresql {chosen.name}") as progress:
            result = server.run(
                chosen,
                clients=args.clients,
                duration_s=args.duration,
                warmup_s=BENCH_WARMUP_S,
                progress=progress,
            )
        if chosen.kind == "transfer":
            total = server.check_total(chosen.accounts)
            result.detail["conserved"] = _conserved(total, chosen.accounts)
        return result


def _conserved(total: int, accounts: int) -> str:
    return "yes" if total == accounts * INITIAL_BALANCE else "no"


def ratios(ours: RunResult, theirs: RunResult) -> dict[str, float | None]:
    """This store over PostgreSQL: throughput (higher is better) and latencies (lower is)."""

    def over(a: float, b: float) -> float | None:
        return round(a / b, 3) if b > 0 else None

    return {
        "throughput": over(ours.throughput_per_s, theirs.throughput_per_s),
        "p50": over(ours.p50_ms, theirs.p50_ms),
        "p99": over(ours.p99_ms, theirs.p99_ms),
    }


def _print(out: Output, chosen: Workload, results: list[RunResult]) -> None:
    out.line(f"{chosen.name}: {chosen.summary}")
    for result in results:
        detail = dict(result.detail)
        conserved = detail.pop("conserved", None)
        errors = detail.pop("errors", None)
        condition_failed = None if result.condition_failed < 0 else f"{result.condition_failed:,}"
        rows: list[tuple[str, object]] = [
            ("throughput", f"{result.throughput_per_s:,.0f} txn/s"),
            ("p50 latency", f"{result.p50_ms:.2f} ms"),
            ("p99 latency", f"{result.p99_ms:.2f} ms"),
            ("completed", f"{result.completed:,} in {result.duration_s:.1f} s"),
            ("refused by condition", condition_failed),
            ("aborted, then retried", f"{result.retried:,} txns ({result.retries:,} retries)"),
            ("failed", f"{result.failed:,}" + (f" ({errors})" if errors else "")),
        ]
        if conserved is not None:
            rows.append(("money conserved", conserved))
        rows += [(name, value) for name, value in detail.items()]
        out.table(("measure", "value"), rows, title=f"{result.system}, {result.clients} clients")
    if len(results) == 2:
        ratio = ratios(results[0], results[1])
        out.table(
            ("measure", "kvstore / postgresql"),
            [(name, "-" if value is None else f"{value:.2f}x") for name, value in ratio.items()],
            title="ratio",
        )
