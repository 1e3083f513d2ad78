"""Key revocation: the time from disabling a key until every gateway worker refuses it.

The key is disabled exactly as the keys service does it (shared contracts): the new KeySnapshot with status
`disabled` is written to Redis `{ns}:key:{hash}`, then `key.changed` carrying it is published and acknowledged
by JetStream. The clock starts before the Redis write. Keep-alive connections are opened until, by the
kernel's own socket table (`ss`), every worker process holds at least one; each is then polled back to back
until it answers 401. A trial's time is when the last worker refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from bench import fixtures, stats
from bench.gateway import Stack, key_snapshot, new_secret
from bench.httpclient import Connection
from bench.system import BenchError, socket_owners
from bench.targets import Target
from shared.events import KeyChanged
from shared.runtime import Resources, open_resources

_MAX_CONNECTIONS = 64


async def _connections(target: Target) -> tuple[list[Connection], dict[int, int]]:
    """Connections covering every worker; returns them and connection index -> worker pid."""
    workers = set(target.worker_pids()) if target.worker_pids else set()
    conns: list[Connection] = []
    owner: dict[int, int] = {}
    body = fixtures.request_body(target.json.model, stream=False)
    while len(conns) < _MAX_CONNECTIONS:
        batch = [Connection("127.0.0.1", target.json.port) for _ in range(max(2, len(workers)))]
        for c in batch:
            await c.open()
            # A request makes sure the worker has accepted the connection before `ss` is asked.
            await c.post(target.json.path, body, target.headers())
        conns += batch
        owners = socket_owners(target.json.port)
        owner = {i: owners[c.local_port] for i, c in enumerate(conns) if c.local_port in owners}
        if workers <= set(owner.values()):
            return conns, owner
    for c in conns:
        await c.close()
    raise BenchError(f"{_MAX_CONNECTIONS} connections did not reach every worker ({sorted(workers)}): "
                     f"reached {sorted(set(owner.values()))}")


async def _poll_until(conns: list[Connection], path: str, body: bytes, secret: str, want_refused: bool,
                      t0: float, timeout_s: float) -> list[float]:
    """Poll every connection until each answers as wanted; returns each one's time (s since t0)."""
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = time.perf_counter() + timeout_s

    async def one(conn: Connection) -> float:
        while True:
            resp = await conn.post(path, body, headers)
            refused = resp.status == 401
            if refused == want_refused:
                return time.perf_counter() - t0
            if not refused and resp.status != 200:
                raise BenchError(f"unexpected HTTP {resp.status} while polling: {resp.body[:200]!r}")
            if time.perf_counter() > deadline:
                raise BenchError(f"key still {'accepted' if want_refused else 'refused'} after {timeout_s}s")

    return list(await asyncio.gather(*(one(c) for c in conns)))


async def _publish(res: Resources, stack: Stack, secret: str, status: str) -> None:
    snap = key_snapshot(stack, secret, status)
    assert res.redis is not None and res.publisher is not None
    await res.redis.set(res.keys.api_key(snap.key_hash), msgspec.json.encode(snap))
    await res.publisher.publish(KeyChanged(key=snap))


async def _measure(stack: Stack, target: Target, trials: int) -> dict[str, Any]:
    conns, owner = await _connections(target)
    body = fixtures.request_body(target.json.model, stream=False)
    times_ms: list[float] = []
    try:
        async with open_resources(stack.common, "bench", use_db=False) as res:
            for _ in range(trials):
                secret = new_secret()
                await _publish(res, stack, secret, "active")
                await _poll_until(conns, target.json.path, body, secret, False, time.perf_counter(), 5)
                t0 = time.perf_counter()
                await _publish(res, stack, secret, "disabled")
                refused = await _poll_until(conns, target.json.path, body, secret, True, t0, 5)
                times_ms.append(max(refused) * 1000)
    finally:
        for c in conns:
            await c.close()
    return {
        "trials": len(times_ms),
        "workers": len(set(owner.values())),
        "connections": len(conns),
        "p50_ms": round(stats.percentile(times_ms, 50), 3),
        "p99_ms": round(stats.percentile(times_ms, 99), 3),
        "max_ms": round(max(times_ms), 3),
        "method": "KeySnapshot(status=disabled) written to Redis, then key.changed published and acked "
                  "(the keys service's contract)",
    }


def measure(stack: Stack, target: Target, trials: int) -> dict[str, Any]:
    return asyncio.run(_measure(stack, target, trials))
