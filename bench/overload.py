"""Overload benchmark: a real cluster driven at 1x, 5x and 20x its capacity, then back to 1x.

Run: ``.venv/bin/python bench/overload.py [--base-clients 32] [--schedule 1:15,5:20,20:20,1:60]
[--workers 2] [--json FILE] [--plot FILE.png]``

Theory of operation
-------------------
Starts a temporary local cluster of real processes (:func:`kvstore.bench.store.temp_cluster`: 3
storage nodes, 1 coordinator, loopback only), loads ``ACCOUNTS`` accounts, then runs the
schedule: each phase is ``multiplier:seconds``, and a phase runs ``multiplier * base_clients``
concurrent users. ``base_clients`` (1x) is the concurrency at which this cluster reaches its
capacity on this machine (goodput stops growing with more users; 32 by default, measured in
``docs/bench.md``), so 20x is twenty times the users the cluster can serve without queueing.

Users are closed loops over the SDK in gateway mode (HTTP), ``USERS_PER_CLIENT`` users sharing
one :class:`~kvstore.client.Client` the way the request handlers of one application process
would, with the SDK's default retry policy: its backoff, the server's ``Retry-After`` and its
retry budget decide every retry, so the run shows whether they keep a burst from turning into a
retry storm. A user draws 40% puts, 30% gets and 30% two-account transactions; when the SDK
gives up on a refusal (its budget is spent), the user waits the refusal's ``Retry-After`` (times
1 to 2, at random) before its next call, as a well-behaved application does. Users run in
``--workers`` separate processes so that the load generator is not the coordinator's bottleneck.

Every second the parent records: goodput (SDK calls answered ok), the SDK's final errors by
code, the coordinator's HTTP answers by status (its ``/metrics``: refusals included, so retries
are visible), and the RSS of every cluster process. It prints one line per second, then a
summary against the targets of issue 17: goodput during the burst as a share of capacity
(capacity: the mean goodput of the first 1x phase after its first seconds), the seconds until
goodput is back after the burst, ``OutcomeUnknown`` answers, and RSS 60 s after the burst
against before it. ``--plot`` draws the same series (needs matplotlib: ``pip install
matplotlib``). Everything is bounded: a fixed schedule, users and accounts; the cluster is
stopped and removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from kvstore.bench.procfs import cpu_s, open_files, rss_mb
from kvstore.bench.store import load, temp_cluster
from kvstore.bench.workloads import account_key
from kvstore.client import Client, connect
from kvstore.errors import KvError

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # optional: pip install -e '.[bench]'
    plt = None  # type: ignore[assignment]

ACCOUNTS = 10_000
USERS_PER_CLIENT = 50
WARMUP_S = 3  # seconds of the first phase left out of the capacity figure
REQUESTS_METRIC = "kvstore_coordinator_http_requests"
PHASE_SECONDS_MAX = 600  # one phase of the schedule
BASE_CLIENTS_MAX = 1000  # 1x users; 20x of it run at once
WORKERS_MAX = 8  # load processes
SCRAPE_TIMEOUT_S = 0.5  # the observer's /metrics request; a busy coordinator's is skipped
RESULTS_TIMEOUT_S = 60  # a load process's counts, after the schedule ended
JOIN_TIMEOUT_S = 30  # a load process's exit, then it is killed
SAMPLES: dict[str, Counter[str]] = {}  # a load process's error messages, by code


@dataclass(frozen=True)
class Phase:
    multiplier: int
    seconds: int


def parse_schedule(text: str) -> list[Phase]:
    phases = []
    for part in text.split(","):
        multiplier, _, seconds = part.partition(":")
        phases.append(Phase(int(multiplier), int(seconds)))
    if not phases or any(
        p.multiplier < 1 or not 1 <= p.seconds <= PHASE_SECONDS_MAX for p in phases
    ):
        raise SystemExit(
            f"--schedule: multiplier:seconds,... with seconds in 1..{PHASE_SECONDS_MAX}"
        )
    return phases


# --- the load (one worker process) --------------------------------------------------------------


async def _user(
    kv: Client, rng: random.Random, *, index: int, wanted: list[int], t0: float, end: float
) -> dict[int, Counter[str]]:
    """One closed-loop user until the schedule ends or it is no longer wanted."""
    seconds: dict[int, Counter[str]] = defaultdict(Counter)
    while time.time() < end and index < wanted[0]:
        roll = rng.random()
        a = rng.randrange(ACCOUNTS)
        try:
            if roll < 0.4:
                await kv.put(account_key(a), {"balance": rng.randrange(1000)})
            elif roll < 0.7:
                await kv.get(account_key(a))
            else:
                b = (a + 1 + rng.randrange(ACCOUNTS - 1)) % ACCOUNTS
                await kv.transact(
                    [
                        {"op": "update", "key": account_key(a), "add": {"balance": -1}},
                        {"op": "update", "key": account_key(b), "add": {"balance": 1}},
                    ]
                )
            outcome = "ok"
        except KvError as error:
            outcome = error.code.name
            SAMPLES.setdefault(outcome, Counter())[error.message[:120]] += 1
            retry_after_s = error.details.get("retry_after_s")
            if isinstance(retry_after_s, int | float):  # a refusal the SDK gave up retrying
                seconds[int(time.time() - t0)][outcome] += 1
                await asyncio.sleep(retry_after_s * (1 + rng.random()))
                continue
        seconds[int(time.time() - t0)][outcome] += 1
    return seconds


@dataclass(frozen=True)
class WorkerPlan:
    """What one load process runs: its users per phase, from ``t0`` (wall clock)."""

    root: str
    users: list[int]
    phases: list[Phase]
    t0: float
    seed: int
    nice: int


async def _worker(plan: WorkerPlan) -> dict[int, dict[str, int]]:
    root, users, phases, t0 = plan.root, plan.users, plan.phases, plan.t0
    clients: list[Client] = []
    running: dict[int, asyncio.Task[dict[int, Counter[str]]]] = {}
    wanted = [0]
    end = t0 + sum(p.seconds for p in phases)
    rng = random.Random(plan.seed)
    try:
        start = t0
        for phase_users, phase in zip(users, phases, strict=True):
            await asyncio.sleep(max(0.0, start - time.time()))
            wanted[0] = phase_users
            for index in range(phase_users):
                task = running.get(index)
                if task is not None and not task.done():
                    continue
                while len(clients) <= index // USERS_PER_CLIENT:
                    clients.append(connect(cluster=root, mode="gateway"))
                user_rng = random.Random(rng.getrandbits(64))
                kv = clients[index // USERS_PER_CLIENT]
                running[index] = asyncio.create_task(
                    _user(kv, user_rng, index=index, wanted=wanted, t0=t0, end=end)
                )
            start += phase.seconds
        results = await asyncio.gather(*running.values())
    finally:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        await asyncio.gather(*(kv.close() for kv in clients), return_exceptions=True)
    total: dict[int, dict[str, int]] = defaultdict(dict)
    for seconds in results:
        for second, counts in seconds.items():
            for outcome, count in counts.items():
                total[second][outcome] = total[second].get(outcome, 0) + count
    return dict(total)


def _worker_main(plan: WorkerPlan, out: Any) -> None:
    os.nice(plan.nice)
    uvloop.install()
    counts = asyncio.run(_worker(plan))
    out.put((counts, {code: dict(c.most_common(3)) for code, c in SAMPLES.items()}))


# --- the observer (parent) ----------------------------------------------------------------------


def http_statuses(metrics_url: str, token: str) -> Counter[str] | None:
    """The coordinator's HTTP answers so far, by status (None: no answer in time)."""
    request = urllib.request.Request(metrics_url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT_S) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == REQUESTS_METRIC:
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("route") != "metrics":
                    counts[sample.labels["status"]] += int(sample.value)
    return counts


@dataclass
class Second:
    t: int
    multiplier: int
    goodput: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    http: dict[str, int] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used in this second
    fds: dict[str, int] = field(default_factory=dict)  # open files (connections, mostly)


def observe(
    pids: dict[str, int], metrics_url: str, token: str, phases: list[Phase], t0: float
) -> list[Second]:
    seconds: list[Second] = []
    previous = http_statuses(metrics_url, token) or Counter()
    cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
    multipliers = [p.multiplier for p in phases for _ in range(p.seconds)]
    for t, multiplier in enumerate(multipliers):
        time.sleep(max(0.0, t0 + t + 1 - time.time()))
        now = http_statuses(metrics_url, token)
        second = Second(t, multiplier)
        if now is not None:  # else this second's answers are counted in the next one's
            second.http = {s: now[s] - previous[s] for s in sorted(now) if now[s] != previous[s]}
            previous = now
        for name, pid in pids.items():
            rss, cpu, before = rss_mb(pid), cpu_s(pid), cpu_before.get(name)
            if rss is not None and not name.startswith("load"):
                second.rss_mb[name] = round(rss, 1)
                second.fds[name] = open_files(pid)
            if cpu is not None and before is not None:
                second.cpu[name] = round(cpu - before, 2)
            cpu_before[name] = cpu
        seconds.append(second)
        print(
            f"t={t:4d}s {multiplier:3d}x http={second.http} cpu={second.cpu} "
            f"rss={sum(second.rss_mb.values()):.0f}MB",
            file=sys.stderr,
            flush=True,
        )
    return seconds


def summarize(seconds: list[Second], phases: list[Phase]) -> dict[str, Any]:
    first = phases[0].seconds
    base = [s.goodput for s in seconds[WARMUP_S:first]] or [s.goodput for s in seconds[:first]]
    capacity = sum(base) / len(base)
    summary: dict[str, Any] = {"capacity_ops_s": round(capacity)}
    start = 0
    for i, phase in enumerate(phases):
        window = seconds[start : start + phase.seconds]
        goodputs = [s.goodput for s in window]
        errors: Counter[str] = Counter()
        for s in window:
            errors.update(s.errors)
        calls = sum(s.goodput + sum(s.errors.values()) for s in window)
        requests = sum(sum(s.http.values()) for s in window)
        summary[f"phase{i}_{phase.multiplier}x"] = {
            # HTTP requests the coordinator answered per SDK call: 1.0 is no retry at all
            "requests_per_call": round(requests / calls, 2) if calls else None,
            "goodput_min_share": round(min(goodputs) / capacity, 3) if capacity else None,
            "goodput_mean_share": round(sum(goodputs) / len(goodputs) / capacity, 3)
            if capacity
            else None,
            "errors": dict(errors),
        }
        start += phase.seconds
    peak = max(range(len(phases)), key=lambda i: phases[i].multiplier)
    burst_end = sum(p.seconds for p in phases[: peak + 1])
    after = seconds[burst_end:]
    for share in (1.0, 0.9):
        back = next((s.t - burst_end for s in after if s.goodput >= share * capacity), None)
        summary[f"seconds_to_{round(share * 100)}pct_after_burst"] = back
    before = seconds[first - 1].rss_mb if first else {}
    late = [s for s in after if s.t - burst_end >= 60]
    if late:
        summary["rss_60s_after_burst_vs_before"] = {
            name: round(late[0].rss_mb.get(name, 0.0) / mb, 3) for name, mb in before.items() if mb
        }
    summary["rss_peak_mb"] = {
        name: max(s.rss_mb.get(name, 0.0) for s in seconds) for name in before
    }
    summary["outcome_unknown"] = sum(s.errors.get("OutcomeUnknown", 0) for s in seconds)
    return summary


def plot(seconds: list[Second], path: Path) -> None:
    if plt is None:
        print("--plot needs matplotlib (pip install matplotlib); no plot written", file=sys.stderr)
        return
    t = [s.t for s in seconds]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 7))
    top.plot(t, [s.goodput for s in seconds], label="goodput (SDK calls ok/s)")
    refused = [s.errors.get("Overloaded", 0) for s in seconds]
    top.plot(t, refused, label="Overloaded/s (after the SDK's retries)")
    others = [sum(s.errors.values()) - s.errors.get("Overloaded", 0) for s in seconds]
    top.plot(t, others, label="other errors/s (conflicts, timeouts...)")
    top2 = top.twinx()
    top2.step(t, [s.multiplier for s in seconds], color="grey", where="post", alpha=0.5)
    top2.set_ylabel("load (x capacity)")
    top.set_ylabel("per second")
    top.legend(loc="upper left")
    names = sorted({name for s in seconds for name in s.rss_mb})
    for name in names:
        bottom.plot(t, [s.rss_mb.get(name) for s in seconds], label=name)
    bottom.set_ylabel("RSS (MB)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    print(f"plot written to {path}", file=sys.stderr)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-clients", type=int, default=32)
    parser.add_argument("--schedule", default="1:15,5:20,20:20,1:60")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--worker-nice", type=int, default=10, help="niceness of the load processes (0..19)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--logs", type=Path, help="copy the cluster's process logs here")
    args = parser.parse_args()
    if not 1 <= args.base_clients <= BASE_CLIENTS_MAX or not 1 <= args.workers <= WORKERS_MAX:
        raise SystemExit(f"--base-clients in 1..{BASE_CLIENTS_MAX}, --workers in 1..{WORKERS_MAX}")
    return args


def collect(seconds: list[Second], counts: dict[int, dict[str, int]]) -> None:
    """Add one load process's outcomes per second to ``seconds``."""
    for second, outcomes in counts.items():
        if 0 <= second < len(seconds):
            target = seconds[second]
            for outcome, count in outcomes.items():
                if outcome == "ok":
                    target.goodput += count
                else:
                    target.errors[outcome] = target.errors.get(outcome, 0) + count


def main() -> None:
    args = arguments()
    phases = parse_schedule(args.schedule)
    context = multiprocessing.get_context("spawn")
    with temp_cluster(coordinators=1) as cluster:
        setup = cluster.connect("gateway")

        async def load_accounts() -> None:
            async with setup:
                await load(setup, ACCOUNTS)

        asyncio.run(load_accounts())
        pids = dict(cluster.cluster.running())
        token = cluster.cluster.admin_token()
        metrics_url = f"{cluster.cluster.api_url()}/metrics"
        t0 = time.time() + 2.0  # time for the workers to start
        out = context.Queue()
        workers = []
        for w in range(args.workers):
            users = [len(range(w, p.multiplier * args.base_clients, args.workers)) for p in phases]
            plan = WorkerPlan(str(cluster.root), users, phases, t0, w, args.worker_nice)
            process = context.Process(target=_worker_main, args=(plan, out), daemon=True)
            process.start()
            workers.append(process)
        for w, process in enumerate(workers):
            if process.pid is not None:
                pids[f"load{w}"] = process.pid
        try:
            seconds = observe(pids, metrics_url, token, phases, t0)
            messages: dict[str, Counter[str]] = {}
            for _ in workers:
                counts, samples = out.get(timeout=RESULTS_TIMEOUT_S)
                collect(seconds, counts)
                for code, texts in samples.items():
                    messages.setdefault(code, Counter()).update(texts)
        finally:
            for process in workers:
                process.join(timeout=JOIN_TIMEOUT_S)
                if process.is_alive():
                    process.kill()
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for spec in cluster.cluster.processes():
                    log = cluster.cluster.log_path(spec.process_id)
                    if log.exists():
                        shutil.copy(log, args.logs / log.name)
    for s in seconds:
        print(
            f"t={s.t:4d}s {s.multiplier:3d}x goodput={s.goodput:6d}/s errors={s.errors} "
            f"http={s.http} cpu_s={s.cpu} rss_mb={s.rss_mb}"
        )
    summary = summarize(seconds, phases)
    summary["error_messages"] = {c: dict(m.most_common(3)) for c, m in sorted(messages.items())}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(
            json.dumps({"summary": summary, "seconds": [s.__dict__ for s in seconds]}, indent=1)
        )
    if args.plot:
        plot(seconds, args.plot)


if __name__ == "__main__":
    main()
