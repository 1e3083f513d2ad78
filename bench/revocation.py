"""Key revocation: the time from disabling a key until every gateway worker refuses it.

Two ways of disabling, each timed from just before the disable starts:
  - `keys_api`: `POST /api/keys/{id}/disable` on a running keys service, as the web console does it (its
    transaction, the Redis snapshot and the `key.changed` event all happen inside that call);
  - `contract`: the bench itself does what the keys service does after its commit: the KeySnapshot with
    status `disabled` is written to Redis `{ns}:key:{hash}`, then `key.changed` carrying it is published
    (and acked).
Keep-alive connections are opened until, by the kernel's own socket table (`ss`), every worker process holds
at least one; each is then polled every millisecond (while the disable is still in flight) until it answers
401. A trial's time is when the last worker refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from bench import fixtures, stats
from bench.gateway import WALLET_MICROS, Stack, key_snapshot, new_secret
from bench.httpclient import Connection
from bench.keys_service import KeysApi
from bench.system import BenchError, socket_owners
from bench.targets import Target
from shared.events import KeyChanged
from shared.runtime import Resources, open_resources
from shared.wallet import SpendGuard

_MAX_CONNECTIONS = 64
_TIMEOUT_S = 5.0
_POLL_GAP_S = 0.001


async def _connections(target: Target, secret: str) -> tuple[list[Connection], set[int]]:
    """Connections covering every worker; returns them and the worker pids they reach."""
    workers = set(target.worker_pids()) if target.worker_pids else set()
    conns: list[Connection] = []
    reached: set[int] = set()
    body = fixtures.request_body(target.json.model, stream=False)
    while len(conns) < _MAX_CONNECTIONS:
        batch = [Connection("127.0.0.1", target.json.port) for _ in range(max(2, len(workers)))]
        for c in batch:
            await c.open()
            # A request makes sure the worker has accepted the connection before `ss` is asked.
            await c.post(target.json.path, body, {"Authorization": f"Bearer {secret}"})
        conns += batch
        owners = socket_owners(target.json.port)
        reached = {owners[c.local_port] for c in conns if c.local_port in owners}
        if workers <= reached:
            return conns, reached
    for c in conns:
        await c.close()
    raise BenchError(f"{_MAX_CONNECTIONS} connections did not reach every worker ({sorted(workers)}): "
                     f"reached {sorted(reached)}")


async def _poll_until(conns: list[Connection], path: str, body: bytes, secret: str, refused: bool,
                      t0: float) -> float:
    """Poll every connection until each answers as wanted (401, or 200); returns when the last did (s)."""
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = t0 + _TIMEOUT_S

    async def one(conn: Connection) -> float:
        while True:
            resp = await conn.post(path, body, headers)
            if (resp.status == 401) == refused and resp.status in (200, 401):
                return time.perf_counter() - t0
            if resp.status not in (200, 401):
                raise BenchError(f"unexpected HTTP {resp.status} while polling: {resp.body[:200]!r}")
            if time.perf_counter() > deadline:
                raise BenchError(f"key still {'accepted' if refused else 'refused'} after {_TIMEOUT_S}s")
            # A millisecond between polls: resolution enough for a 100 ms target, without the poller crowding
            # out the keys service and the engines on the load core.
            await asyncio.sleep(_POLL_GAP_S)

    return max(await asyncio.gather(*(one(c) for c in conns)))


async def _trials(target: Target, secret: str, trials: int, disable: Callable[[], Awaitable[None]],
                  enable: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    body = fixtures.request_body(target.json.model, stream=False)
    path = target.json.path
    await _poll_until_ready(target, secret)
    conns, reached = await _connections(target, secret)
    times_ms: list[float] = []
    try:
        for _ in range(trials):
            t0 = time.perf_counter()
            await enable()
            await _poll_until(conns, path, body, secret, False, t0)
            t0 = time.perf_counter()
            # The disable runs while the workers are polled: a worker may refuse before the call returns.
            _, refused_at = await asyncio.gather(disable(), _poll_until(conns, path, body, secret, True, t0))
            times_ms.append(refused_at * 1000)
    finally:
        for c in conns:
            await c.close()
    return {"trials": len(times_ms), "workers": len(reached), "connections": len(conns),
            "p50_ms": round(stats.percentile(times_ms, 50), 3),
            "p99_ms": round(stats.percentile(times_ms, 99), 3), "max_ms": round(max(times_ms), 3)}


async def _poll_until_ready(target: Target, secret: str) -> None:
    """Wait (bounded) for a 200 with this key: the catalog and the key have reached the gateway."""
    conn = Connection("127.0.0.1", target.json.port)
    body = fixtures.request_body(target.json.model, stream=False)
    deadline = time.monotonic() + 15
    try:
        while True:
            resp = await conn.post(target.json.path, body, {"Authorization": f"Bearer {secret}"})
            if resp.status == 200:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the gateway never accepted the revocation key: HTTP {resp.status} "
                                 f"{resp.body[:200]!r}")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def _publish(res: Resources, stack: Stack, secret: str, status: str) -> None:
    snap = key_snapshot(stack, secret, status)
    assert res.redis is not None and res.publisher is not None
    await res.redis.set(res.keys.api_key(snap.key_hash), msgspec.json.encode(snap))
    await res.publisher.publish(KeyChanged(key=snap))


async def _by_contract(stack: Stack, target: Target, trials: int) -> dict[str, Any]:
    secret = new_secret()
    async with open_resources(stack.common, "bench", use_db=False) as res:
        await _publish(res, stack, secret, "active")
        out = await _trials(target, secret, trials, lambda: _publish(res, stack, secret, "disabled"),
                            lambda: _publish(res, stack, secret, "active"))
    return {**out, "method": "contract: KeySnapshot(status=disabled) written to Redis, then key.changed "
                             "published and acked, as the keys service does after its commit"}


async def _by_keys_api(stack: Stack, target: Target, trials: int, api: KeysApi) -> dict[str, Any]:
    key_id, secret = api.create_key("bench-revocation")
    async with open_resources(stack.common, "bench", use_db=False, use_nats=False) as res:
        assert res.redis is not None
        # The admin's wallet, funded as billing would (SpendGuard contract): no billing process in this run.
        await SpendGuard(res.redis, res.keys).set_balance(api.account_id, WALLET_MICROS)
    call_ms: list[float] = []

    def disable() -> None:
        started = time.perf_counter()
        api.disable(key_id)
        call_ms.append((time.perf_counter() - started) * 1000)

    out = await _trials(target, secret, trials, lambda: asyncio.to_thread(disable),
                        lambda: asyncio.to_thread(api.enable, key_id))
    # How much of it is the keys service answering the call (its transaction, Redis write and publish).
    out["call_p50_ms"] = round(stats.percentile(call_ms, 50), 3)
    out["call_p99_ms"] = round(stats.percentile(call_ms, 99), 3)
    return {**out, "method": "keys_api: POST /api/keys/{id}/disable on the keys service (admin session)"}


def by_contract(stack: Stack, target: Target, trials: int) -> dict[str, Any]:
    return asyncio.run(_by_contract(stack, target, trials))


def by_keys_api(stack: Stack, target: Target, trials: int, api: KeysApi) -> dict[str, Any]:
    return asyncio.run(_by_keys_api(stack, target, trials, api))
