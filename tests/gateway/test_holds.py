"""What a killed gateway worker held on a wallet is given back. A request's reservation is listed in the wallet's
holds hash until its settle (finish.lua) unlists it; a worker killed mid-request never settles, so once the entry
expires (a minute after the reservation's own marker) the next admission the wallet or key quota would refuse
gives its amount back first (lua/sweep_leases.lua). Before, such an amount stayed in `reserved` for good."""

from __future__ import annotations

import time
from typing import Any

from litestar.testing import AsyncTestClient

from services.gateway.admission import Admission, Limits
from shared.resp import Resp
from tests.gateway.conftest import World, eventually

CHAT = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


async def chat(gateway: AsyncTestClient[Any], secret: str) -> Any:
    return await gateway.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"})


async def holds(world: World, account_id: str) -> dict[str, str]:
    raw = await world.redis.hgetall(world.res.keys.leases(account_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def admitted_and_killed(world: World, snap: Any, amount: int, quota: int = 0) -> str:
    """A request admitted by another gateway worker, which died before settling it."""
    redis = Resp.from_url(world.common.redis_url)
    try:
        admission = Admission(redis, world.res.keys)
        rid = f"req_killed_{time.time_ns()}"
        await redis.execute(b"PING")  # connected: send_admit queues on a live connection
        sent = admission.send_admit(request_id=rid, account_id=snap.account_id, key_id=snap.key_id, amount=amount,
                                    quota_limit=quota, token_estimate=10, limits=Limits())
        verdict = await admission.verdict(sent)
        assert verdict.ticket is not None
        return rid
    finally:
        await redis.aclose()


async def expire(world: World, account_id: str, rid: str) -> None:
    """What time does to a reservation nobody settles: its marker's TTL runs out, then its holds entry's."""
    await world.redis.delete(world.res.keys.reservation(rid))
    field = f"res:{rid}"
    value = (await holds(world, account_id))[field].split(":", 2)
    value[1] = str(int(time.time() * 1000) - 1)
    await world.redis.hset(world.res.keys.leases(account_id), field, ":".join(value))


async def test_a_killed_workers_reservation_is_given_back_once_it_expires(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key(balance=1_000_000)
    rid = await admitted_and_killed(world, snap, 1_000_000)
    assert (await world.wallet(snap.account_id))["reserved"] == 1_000_000
    assert f"res:{rid}" in await holds(world, snap.account_id)
    # Held by a request that may still be running: the wallet is short, and refuses.
    assert (await chat(gateway, secret)).status_code == 402
    await expire(world, snap.account_id, rid)
    r = await chat(gateway, secret)
    assert r.status_code == 200, r.text

    async def only_the_answered_request_was_held() -> bool:
        w = await world.wallet(snap.account_id)
        return w.get("reserved") == 0 and w.get("pending", 0) > 0 and await holds(world, snap.account_id) == {}

    await eventually(only_the_answered_request_was_held)


async def test_a_killed_workers_reservation_on_a_capped_key_is_given_back_to_the_quota_too(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key(balance=50_000_000, quota_micros=1_000_000)
    rid = await admitted_and_killed(world, snap, 1_000_000, quota=1_000_000)
    quota = world.res.keys.quota(snap.key_id)
    assert int(await world.redis.hget(quota, "reserved")) == 1_000_000
    r = await chat(gateway, secret)
    assert r.status_code == 402 and "spending limit" in r.json()["error"]["message"], r.text
    await expire(world, snap.account_id, rid)
    assert (await chat(gateway, secret)).status_code == 200

    async def given_back() -> bool:
        w = await world.wallet(snap.account_id)
        return int(await world.redis.hget(quota, "reserved")) == 0 and w.get("reserved") == 0

    await eventually(given_back)


async def test_settled_requests_leave_nothing_listed(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key(rpm_limit=1000)  # a rate limit: admitted by Redis every time, never leased
    for _ in range(5):
        assert (await chat(gateway, secret)).status_code == 200

    async def unlisted() -> bool:
        return await holds(world, snap.account_id) == {} and (await world.wallet(snap.account_id)).get(
            "reserved") == 0

    await eventually(unlisted)
