"""The gateway's own Python per request, without the server: its RSGI app called in-process, one request after
another, against the bench's nginx upstream and private Redis/NATS.

    python -m bench.inproc [--requests 5000] [--stream] [--profile]

granian's threads, its body hand-off and its answer write are not in this number, so what it prints is what
Faregate's code (and the clients it drives: the upstream HTTP client, Redis, NATS) costs a request on this core:
CPU and wall µs a request, and the wall and CPU time of the two socket writes every request makes (the upstream
request and the Redis admission; the first is counted at asyncio's StreamWriter.write, so any other such write in
the process counts too, a few in a run). `--profile` adds a cProfile of the same requests (which slows them about 2x;
read its shares, not its times).

Why the socket writes are timed: a write to a loopback peer on the other core is a system call that runs the
peer's TCP receive path too; on the bench's 2-core VMs one took 25-45 µs of the writing thread's CPU (and in one
noisy run ~100 µs of wall time), so the number of writes a request makes is one of the things to cut.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.streams
import cProfile
import os
import pstats
import time
from collections.abc import Callable
from typing import Any

import uvloop

from bench import fixtures, gateway
from faregate.cli import load_all_configs
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from shared import config, resp
from shared.config import CommonSettings


class _Scope:
    """The RSGI request scope granian would pass (the attributes the gateway reads)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.proto = "http"
        self.method = "POST"
        self.path = "/v1/chat/completions"
        self.headers = headers
        self.query_string = ""
        self.client = "127.0.0.1:50000"
        self.server = "127.0.0.1:8000"
        self.scheme = "http"
        self.http_version = "1.1"


class _Proto:
    """The RSGI protocol object of one request: the body in one await, the answer in one call (or a stream's
    transport). `first_ns`: when the answer, or a stream's first chunk, was handed over (perf_counter_ns)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0
        self.first_ns = 0
        self.chunks = 0

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.first_ns = time.perf_counter_ns()

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Any:
        self.status = status
        return self

    async def send_bytes(self, chunk: bytes) -> None:
        if not self.chunks:
            self.first_ns = time.perf_counter_ns()
        self.chunks += 1

    async def client_disconnect(self) -> None:
        await asyncio.Event().wait()


class _Timed:
    """Calls, wall ns and thread-CPU ns spent in one patched function."""

    def __init__(self) -> None:
        self.calls = self.wall_ns = self.cpu_ns = 0

    def wrap(self, f: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return f(*args, **kwargs)
            finally:
                self.calls += 1
                self.wall_ns += time.perf_counter_ns() - wall
                self.cpu_ns += time.thread_time_ns() - cpu

        return timed


def _patch_writes() -> dict[str, _Timed]:
    redis, upstream = _Timed(), _Timed()
    resp._Connection._flush = redis.wrap(resp._Connection._flush)  # type: ignore[method-assign]
    asyncio.streams.StreamWriter.write = upstream.wrap(asyncio.streams.StreamWriter.write)  # type: ignore[method-assign]
    return {"Redis write (shared/resp.py)": redis, "upstream write (asyncio StreamWriter)": upstream}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--stream", action="store_true", help="streaming requests (the bench's 20-chunk stream)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the measured requests")
    args = ap.parse_args()
    with gateway.standalone() as (cores, _, stack, secret):
        os.sched_setaffinity(0, set(cores.sut))  # the system-under-test core, as the gateway's worker
        os.environ.update(stack.env)
        load_all_configs()
        app = create_app(config.load(GatewaySettings), config.load(CommonSettings))
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        app.__rsgi_init__(loop)
        timers = _patch_writes()
        body = fixtures.request_body("bench-stream" if args.stream else "bench-json", stream=args.stream)
        headers = {"authorization": f"Bearer {secret}", "content-type": "application/json",
                   "content-length": str(len(body)), "host": "127.0.0.1"}

        firsts: list[int] = []  # ns from the call to the answer's (or first chunk's) hand-over

        async def requests(n: int) -> None:
            for _ in range(n):
                proto = _Proto(body)
                t0 = time.perf_counter_ns()
                await app.__rsgi__(_Scope(headers), proto)
                if proto.status != 200 or (args.stream and proto.chunks < 2):
                    raise SystemExit(f"the gateway answered {proto.status} ({proto.chunks} chunks)")
                firsts.append(proto.first_ns - t0)

        try:
            loop.run_until_complete(requests(500))  # warm-up: connections, caches
            for t in timers.values():
                t.calls = t.wall_ns = t.cpu_ns = 0
            firsts.clear()
            profiler = cProfile.Profile() if args.profile else None
            wall, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
            if profiler:
                profiler.enable()
            loop.run_until_complete(requests(args.requests))
            if profiler:
                profiler.disable()
            wall, cpu, main_cpu = (time.perf_counter() - wall, time.process_time() - cpu,
                                   time.thread_time() - main_cpu)
            loop.run_until_complete(asyncio.sleep(0.1))  # the last records go out
        finally:
            app.__rsgi_del__(loop)
    n = args.requests
    kind = "streaming" if args.stream else "sequential"
    print(f"{n} {kind} requests{' (profiled)' if profiler else ''}: {wall / n * 1e6:.1f} µs wall, "
          f"{cpu / n * 1e6:.1f} µs CPU a request (the whole process: records and events included), "
          f"{main_cpu / n * 1e6:.1f} µs of it on the event loop's thread")
    firsts.sort()
    print(f"  to the {'first chunk' if args.stream else 'answer'}'s hand-over: p50 {firsts[n // 2] / 1000:.1f} µs, "
          f"p90 {firsts[n * 9 // 10] / 1000:.1f} µs")
    for name, t in timers.items():
        if t.calls:
            print(f"  {name}: {t.calls / n:.2f} a request, {t.wall_ns / t.calls / 1000:.1f} µs wall and "
                  f"{t.cpu_ns / t.calls / 1000:.1f} µs thread CPU each")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
