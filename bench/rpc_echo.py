"""RPC transport throughput: echo calls between two processes over 127.0.0.1.

Run: ``.venv/bin/python bench/rpc_echo.py [--callers 64] [--duration 5] [--connections 1]
[--body-bytes 100]``

Theory of operation
-------------------
Starts a server process (``--serve``, an :class:`~kvstore.rpc.RpcServer` whose handler returns
the body it is given) on a free loopback port, then runs ``--callers`` concurrent callers in this
process, spread over ``--connections`` :class:`~kvstore.rpc.RpcClient` instances, each calling
``echo`` in a loop for ``--duration`` seconds. Both processes run on uvloop. Prints calls/s and
the p50/p99 latency, and the CPU time each process spent per call (a figure that stays
meaningful when other work shares the box). The server process is killed at the end, whatever
happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import uvloop
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore.bench.procfs import cpu_s  # noqa: E402
from kvstore.rpc import AsyncHandler, RpcClient, RpcServer  # noqa: E402
from kvstore.timestamps import HybridClock, random_origin, system_clock_us  # noqa: E402

SECRET = "bench-secret"
CLOCK = HybridClock(system_clock_us, random_origin())  # this process's; a fork re-draws its origin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serve(port: int) -> None:
    clock = CLOCK

    async def echo(method: str, body: object, timeout_ms: int) -> object:
        return body

    server = RpcServer(AsyncHandler(echo), secret=SECRET, clock=clock.now)
    app = web.Application()
    server.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def load(
    port: int, server_pid: int, *, callers: int, duration_s: float, connections: int, body: bytes
) -> None:
    clock = CLOCK
    url = f"ws://127.0.0.1:{port}/rpc"
    clients = [RpcClient(url, SECRET, on_clock=clock.observe) for _ in range(connections)]
    latencies: list[float] = []
    done = 0
    try:
        for client in clients:
            await client.call("echo", b"warm-up", 5_000)
        end = time.perf_counter() + duration_s

        async def caller(client: RpcClient) -> None:
            nonlocal done
            perf = time.perf_counter
            while True:
                started = perf()
                if started >= end:
                    return
                await client.call("echo", body, 5_000)
                latencies.append(perf() - started)
                done += 1

        started = time.perf_counter()
        client_cpu, server_cpu = time.process_time(), cpu_s(server_pid)
        await asyncio.gather(*(caller(clients[i % connections]) for i in range(callers)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_cpu_end = cpu_s(server_pid)
    finally:
        for client in clients:
            await client.close()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(
        f"{done / elapsed:,.0f} calls/s  ({done} calls in {elapsed:.2f} s, {callers} callers, "
        f"{connections} connection(s), {len(body)}-byte body)  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
    )
    cpu = f"CPU per call: client {client_cpu / done * 1e6:.1f} us"
    if server_cpu is not None and server_cpu_end is not None:
        cpu += f", server {(server_cpu_end - server_cpu) / done * 1e6:.1f} us"
    print(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--body-bytes", type=int, default=100)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        uvloop.run(serve(args.serve))
        return
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the server process did not start")
        body = b"x" * args.body_bytes
        uvloop.run(
            load(
                port,
                server.pid,
                callers=args.callers,
                duration_s=args.duration,
                connections=args.connections,
                body=body,
            )
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
