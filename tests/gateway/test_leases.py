"""Leases (services/gateway/leases.py): a busy key's requests are admitted on a standing hold of its wallet and of
its concurrency slots, with no Redis round trip each. The money stays exact: each leased request's cost reaches
`pending` before its usage event goes out, a lease holds only what the wallet has, a balance cut takes it back,
and a killed worker's lease is given back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from services.gateway.app import create_app
from services.gateway.leases import Leases
from shared import events as ev
from shared.pricing import cost_micros
from shared.resp import Resp
from shared.wallet import SpendGuard
from tests import procs
from tests.gateway.conftest import World, eventually, settings, usage_events

CHAT = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def leased() -> float:
    return REGISTRY.get_sample_value("faregate_gateway_leased_admissions_total") or 0.0


async def chat(gateway: AsyncTestClient[Any], secret: str) -> Any:
    return await gateway.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"})


async def until_leased(gateway: AsyncTestClient[Any], secret: str, count: int = 5) -> list[str]:
    """Sequential requests until `count` were admitted on a lease; their request ids, all answered 200."""
    start = leased()
    rids = []
    for _ in range(400):
        r = await chat(gateway, secret)
        assert r.status_code == 200, r.text
        rids.append(r.headers["x-request-id"])
        if leased() >= start + count:
            return rids
        await asyncio.sleep(0.002)  # a busy client, not a flood: leaves the record batch its timer
    raise AssertionError("the key was never leased")


def cost(e: ev.UsageRecorded) -> int:
    assert e.price is not None
    return cost_micros(e.price, prompt_tokens=e.prompt_tokens, completion_tokens=e.completion_tokens,
                       cached_tokens=e.cached_tokens, group_ratio_ppm=e.group_ratio_ppm, discount_ppm=e.discount_ppm)


async def leases_of(world: World, account_id: str) -> dict[str, int]:
    """The wallet's leases: field -> amount held (its holds hash also lists requests' reservations, "res:<id>")."""
    raw = await world.redis.hgetall(world.res.keys.leases(account_id))
    return {k.decode(): int(v.decode().split(":")[0]) for k, v in raw.items() if not k.startswith(b"res:")}


async def lease_slots(world: World, key_id: str) -> list[str]:
    members = await world.redis.zrange(world.res.keys.rate("key", key_id, "inflight"), 0, -1)
    return [m.decode() for m in members if f":{key_id}:".encode() in m]


async def test_a_busy_key_is_admitted_on_its_lease_and_every_cost_reaches_pending_exactly(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key(concurrency_limit=40)
    rids = await until_leased(gateway, secret)
    events = await usage_events(world.res, set(rids))
    assert len(events) == len(rids) and all(e.status == 200 and e.completion_tokens > 0 for e in events)
    spent = sum(cost(e) for e in events)
    assert spent > 0

    async def settled() -> bool:
        # Billing is not running here: `pending` holds every cost, leased or not; `reserved` is the lease alone.
        w = await world.wallet(snap.account_id)
        leases = await leases_of(world, snap.account_id)
        return w.get("pending") == spent and w.get("reserved") == sum(leases.values()) > 0

    await eventually(settled)
    # The lease also holds some of the key's concurrency slots: never more than a quarter of its limit here.
    slots = await lease_slots(world, snap.key_id)
    assert 1 <= len(slots) <= snap.concurrency_limit // 4


async def test_keys_with_rate_limits_a_cap_or_an_allowance_are_never_leased(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    keys = [await world.add_key(rpm_limit=10_000), await world.add_key(quota_micros=5_000_000),
            await world.add_key(org_id="o_" + str(time.time_ns()))]
    before = leased()
    for secret, _ in keys:
        for _ in range(30):
            assert (await chat(gateway, secret)).status_code == 200
            await asyncio.sleep(0.002)
    assert leased() == before
    for _, snap in keys:
        assert await leases_of(world, snap.account_id) == {}


async def test_a_balance_cut_takes_the_lease_back_and_requests_are_refused(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key()
    await until_leased(gateway, secret)
    await eventually(lambda: _settled_into_pending(world, snap.account_id))
    w = await world.wallet(snap.account_id)
    held, pending_at_cut = w["reserved"], w["pending"]
    assert held > 0
    await SpendGuard(world.redis, world.res.keys).set_balance(snap.account_id, 0)  # e.g. a refund reversed
    statuses = []
    for _ in range(50):
        r = await chat(gateway, secret)
        statuses.append(r.status_code)
        if r.status_code == 402:
            break
        await asyncio.sleep(0.01)
    assert statuses[-1] == 402, statuses
    assert set(statuses[:-1]) <= {200}

    async def given_back() -> bool:
        return await leases_of(world, snap.account_id) == {} and (await world.wallet(snap.account_id)).get(
            "reserved") == 0

    await eventually(given_back)
    # What the lease let through after the cut stays within what it held.
    assert (await world.wallet(snap.account_id))["pending"] - pending_at_cut <= held


async def _settled_into_pending(world: World, account_id: str) -> bool:
    w = await world.wallet(account_id)
    return w.get("reserved") == sum((await leases_of(world, account_id)).values())


async def test_a_killed_workers_lease_is_given_back_when_the_wallet_would_refuse(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key(balance=1_000_000)
    leases_key = world.res.keys.leases(snap.account_id)
    wallet = world.res.keys.wallet(snap.account_id)
    now_ms = int(time.time() * 1000)
    # A live lease of another worker holding the whole wallet: refused, and the lease is left alone.
    await world.redis.hset(leases_key, "alive:k", f"1000000:{now_ms + 60_000}")
    await world.redis.hincrby(wallet, "reserved", 1_000_000)
    r = await chat(gateway, secret)
    assert r.status_code == 402, r.text
    assert await leases_of(world, snap.account_id) == {"alive:k": 1_000_000}
    # The same lease once expired (its worker was killed and never renewed it): given back, and the request passes.
    await world.redis.hset(leases_key, "alive:k", f"1000000:{now_ms - 1}")
    r = await chat(gateway, secret)
    assert r.status_code == 200, r.text
    assert await leases_of(world, snap.account_id) == {}

    async def nothing_held() -> bool:
        return (await world.wallet(snap.account_id)).get("reserved") == 0

    await eventually(nothing_held)


async def test_a_stopping_gateway_gives_its_leases_back(world: World, common: Any) -> None:
    secret, snap = await world.add_key(concurrency_limit=40)
    dead = f"http://127.0.0.1:{procs.free_port()}"
    app = create_app(settings(), msgspec.structs.replace(common, keys_url=dead, billing_url=dead))
    async with AsyncTestClient(app=app, base_url="http://gateway.test", timeout=30) as gateway:
        await until_leased(gateway, secret)
        assert await leases_of(world, snap.account_id) != {}
        assert await lease_slots(world, snap.key_id) != []
    assert await leases_of(world, snap.account_id) == {}
    assert await lease_slots(world, snap.key_id) == []
    w = await world.wallet(snap.account_id)
    assert w.get("reserved") == 0 and w.get("pending", 0) > 0


async def test_quiet_keys_leave_no_demand_count_behind(world: World) -> None:
    redis = Resp.from_url(world.common.redis_url)
    try:
        leases = Leases(redis, world.res.keys, 60_000)
        leases.admitted_by_redis("a_quiet", "k_quiet", 100, 0, 1_000_000)  # one request: counted, not leased
        leases.admitted_by_redis("a_busy", "k_busy", 100, 0, 1_000_000)
        assert set(leases._demand) == {"k_quiet", "k_busy"}
        started, count = leases._demand["k_quiet"]
        leases._demand["k_quiet"] = (started - 2.0, count)  # its second is long over
        await leases.keep()
        assert set(leases._demand) == {"k_busy"}
    finally:
        await redis.aclose()
