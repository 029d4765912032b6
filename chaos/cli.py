"""Command line of the chaos package.

``python -m chaos sim --seeds N [--start S]`` sweeps seeds through the simulator, printing one line
per failing seed, then how much the seeds did (``ops per seed: median ..., ok median ...; fail
...%, info ...%``) and ``seeds: N, failures: F`` (exit status 1 when F > 0).
``python -m chaos sim --seed S --verbose`` replays one seed and prints its trace.
``python -m chaos mutants`` arms each deliberate bug in turn and ends with ``mutants caught: C/T``
(exit status 1 unless every mutant was caught within its seed budget).
``python -m chaos run --workload W --nemesis N1,N2 --duration S [--seed] [--clients] [--out]
[--txn-only] [--replication-factor R] [--client http|dynamodb]`` runs real processes under faults
and checks the history (:mod:`chaos.runner`); its last line is the verdict, and its exit status 0
only when every checker passed. ``--replication-factor 2`` or ``3`` runs a replicated cluster and
allows the nemeses of :data:`~chaos.nemesis.REPLICATED_NEMESES` (refused, exit status 2, without
it). ``--client dynamodb`` sends the load through the DynamoDB endpoint with boto3
(:mod:`chaos.dynamodb_client`; the bank workload only, others refused with exit status 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from chaos.nemesis import NEMESES, REPLICATED_NEMESES, parse_nemeses
from chaos.runner import (
    CLIENTS,
    DYNAMODB_WORKLOADS,
    RUN_CLIENTS_MAX,
    RUN_DURATION_S_MAX,
    RUN_NODES,
    RunConfig,
)
from chaos.runner import WORKLOADS as RUN_WORKLOADS
from chaos.runner import run as run_once
from chaos.sim.config import WORKLOADS, SimConfig
from chaos.sim.simulation import run_seed
from chaos.sim.sweep import (
    MUTANT_SEED_BUDGET,
    MUTANT_WORKLOADS,
    hunt,
    save_failure,
    sweep,
    workload_for,
)
from kvstore.mutants import ARMING_ENV, ARMING_VALUE, Mutant

__all__ = ["main"]

DEFAULT_OUT = Path("chaos-out") / "sim"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("sim", help="run the deterministic simulator over seeds")
    sim.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    sim.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    sim.add_argument("--seed", type=int, help="replay this one seed")
    sim.add_argument("--verbose", action="store_true", help="print the trace of --seed")
    sim.add_argument("--workload", choices=WORKLOADS, help="force one workload for every seed")
    sim.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where failures are saved")
    sim.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    run = sub.add_parser("run", help="a real cluster under faults, with a checked history")
    run.add_argument("--workload", required=True, choices=RUN_WORKLOADS)
    run.add_argument(
        "--nemesis",
        default="all",
        help=f"comma-separated: {', '.join(NEMESES)}, all, none; replicated runs also "
        f"{', '.join(REPLICATED_NEMESES)} (all: every kind that applies)",
    )
    run.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    run.add_argument("--seed", type=int, help="the fault schedule's and clients' seed")
    run.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    run.add_argument("--out", type=Path, help="the report directory (default chaos-out/run/...)")
    run.add_argument(
        "--txn-only",
        action="store_true",
        help="only read and write transactions, no singletons, scans or re-runs (the default "
        "mixes every kind, as the simulator does)",
    )
    run.add_argument(
        "--replication-factor",
        type=int,
        default=1,
        help=f"1 (default): 3 nodes and 2 coordinators; 2..{RUN_NODES}: a replicated cluster "
        f"of {RUN_NODES} nodes with its private etcd, no standalone coordinator",
    )
    run.add_argument(
        "--client",
        choices=CLIENTS,
        default="http",
        help="http (default): the public HTTP API; dynamodb: the DynamoDB endpoint through "
        f"boto3 (workloads: {', '.join(DYNAMODB_WORKLOADS)})",
    )
    mutants = sub.add_parser("mutants", help="prove that every deliberate bug is caught")
    mutants.add_argument("--budget", type=int, default=MUTANT_SEED_BUDGET, help="seeds per mutant")
    mutants.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    return parser


def _replay(seed: int, workload: str | None, verbose: bool, out: Path) -> int:
    result = run_seed(seed, SimConfig(workload=workload or workload_for(seed)), verbose=verbose)
    if verbose:
        for line in result.trace.lines:
            print(line)
    print(f"seed {seed} workload {result.config.workload}: {result.summary()}")
    print(f"profile: {result.profile.describe()}")
    print(f"stats: {result.stats}")
    print(f"digest: {result.digest}")
    for anomaly in result.anomalies():
        print(f"  {anomaly}")
    if not result.ok:
        print(f"saved: {save_failure(result, out)}")
        if result.error:
            print(result.error)
    return 0 if result.ok else 1


def _sim(args: argparse.Namespace) -> int:
    if args.seed is not None:
        return _replay(args.seed, args.workload, args.verbose, args.out)
    began = time.monotonic()
    failures = 0
    per_seed: list[dict[str, int]] = []
    for outcome in sweep(
        args.start, args.seeds, workload=args.workload, out=args.out, jobs=args.jobs
    ):
        ops = outcome.stats.get("ops")
        per_seed.append(ops if isinstance(ops, dict) else {})
        if not outcome.ok:
            failures += 1
            print(
                f"seed {outcome.seed} ({outcome.workload}): {outcome.summary}; "
                f"history: {outcome.saved}/history.jsonl",
                flush=True,
            )
    elapsed = time.monotonic() - began
    print(_ops_summary(per_seed))
    print(f"seeds: {args.seeds}, failures: {failures} ({elapsed:.1f} s)")
    return 1 if failures else 0


def _ops_summary(per_seed: list[dict[str, int]]) -> str:
    """Operations per seed (median), committed ones (median), and the shares that failed or
    stayed unknown over the whole sweep."""
    if not per_seed:
        return "ops per seed: none"
    totals = [sum(ops.values()) for ops in per_seed]
    everything = sum(totals) or 1
    fail = sum(ops.get("fail", 0) for ops in per_seed)
    info = sum(ops.get("info", 0) for ops in per_seed)
    return (
        f"ops per seed: median {statistics.median(totals):g}, "
        f"ok median {statistics.median(ops.get('ok', 0) for ops in per_seed):g}; "
        f"fail {100 * fail / everything:.1f}%, info {100 * info / everything:.1f}%"
    )


def _mutants(args: argparse.Namespace) -> int:
    os.environ[ARMING_ENV] = ARMING_VALUE  # this process only: it exists to run broken stores
    caught = 0
    elsewhere = [mutant for mutant in Mutant if not MUTANT_WORKLOADS[mutant]]
    for mutant in elsewhere:
        print(f"{mutant.value}: not in the simulator's reach (python -m chaos.mutant_runs)")
    for mutant in Mutant:
        if mutant in elsewhere:
            continue
        began = time.monotonic()
        outcome = hunt(mutant, args.budget, jobs=args.jobs)
        elapsed = time.monotonic() - began
        if outcome is None:
            print(
                f"{mutant.value}: NOT caught in {args.budget} seeds ({elapsed:.1f} s)", flush=True
            )
            continue
        caught += 1
        print(
            f"{mutant.value}: caught at seed {outcome.seed} ({outcome.workload}): "
            f"{outcome.summary} ({elapsed:.1f} s)",
            flush=True,
        )
    total = len(Mutant) - len(elsewhere)
    print(f"mutants caught: {caught}/{total}")
    return 0 if caught == total else 1


def _run(args: argparse.Namespace) -> int:
    if not 1 <= args.replication_factor <= RUN_NODES:
        print(f"chaos run: --replication-factor must be 1..{RUN_NODES}", file=sys.stderr)
        return 2
    try:
        nemeses = parse_nemeses(args.nemesis, replicated=args.replication_factor > 1)
    except ValueError as error:
        print(f"chaos run: {error}", file=sys.stderr)
        return 2
    if not 1 <= args.clients <= RUN_CLIENTS_MAX or not 0 < args.duration <= RUN_DURATION_S_MAX:
        print(
            f"chaos run: --clients must be 1..{RUN_CLIENTS_MAX} and --duration "
            f"0..{RUN_DURATION_S_MAX:g} seconds",
            file=sys.stderr,
        )
        return 2
    if args.client == "dynamodb" and args.workload not in DYNAMODB_WORKLOADS:
        print(
            f"chaos run: --client dynamodb runs {', '.join(DYNAMODB_WORKLOADS)} only "
            "(chaos/dynamodb_client.py says why)",
            file=sys.stderr,
        )
        return 2
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    name = args.workload if args.client == "http" else f"{args.workload}-{args.client}"
    out = args.out or Path("chaos-out") / "run" / f"{name}-{seed}"
    replicated = (
        f", replication factor {args.replication_factor}" if args.replication_factor > 1 else ""
    )
    via = f", client {args.client}" if args.client != "http" else ""
    print(
        f"chaos run: {args.workload}{via}, nemesis {args.nemesis}{replicated}, seed {seed}, "
        f"report in {out}"
    )
    config = RunConfig(
        workload=args.workload,
        nemeses=nemeses,
        duration_s=args.duration,
        seed=seed,
        clients=args.clients,
        out=out,
        every_kind=not args.txn_only,
        replication_factor=args.replication_factor,
        client=args.client,
    )
    return run_once(config)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sim":
        return _sim(args)
    if args.command == "run":
        return _run(args)
    return _mutants(args)


if __name__ == "__main__":
    sys.exit(main())
