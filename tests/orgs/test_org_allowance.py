"""A member's monthly allowance is enforced at the gateway by the same atomic reservation as the wallet and
the key quota: over it, that member gets 402 while the org's other members continue; the month is the org's.

The gateway app runs on real Redis, NATS and the mock upstream; the key snapshots are written to Redis the way
the keys service writes them (tests/gateway/conftest.py), carrying the allowance keys puts there.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient

from services.gateway.admission import Allowance
from tests.gateway.conftest import World, eventually

ORG = "org_allowancetest"


async def chat(client: AsyncTestClient[Any], secret: str) -> Any:
    return await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                              json={"model": "gpt-4o-mini", "max_tokens": 8,
                                    "messages": [{"role": "user", "content": "hi"}]})


async def settled(world: World, month_key: str) -> None:
    """Wait until no request holds a reservation on this allowance month (settlement follows the answer)."""

    async def nothing_reserved() -> bool:
        return int(await world.redis.hget(month_key, "reserved") or 0) == 0

    await eventually(nothing_reserved)


def test_the_allowance_month_is_the_orgs() -> None:
    # 23:30 UTC on 31 January is already February in Tokyo, still January in New York.
    at = datetime(2027, 1, 31, 23, 30, tzinfo=UTC).timestamp()
    assert Allowance(ORG, "u", 5, "Asia/Tokyo").key("ns", at) == f"ns:allow:{ORG}:u:202702"
    assert Allowance(ORG, "u", 5, "America/New_York").key("ns", at) == f"ns:allow:{ORG}:u:202701"
    assert Allowance(ORG, "u", 5, "Not/AZone").key("ns", at) == f"ns:allow:{ORG}:u:202701"  # UTC


async def test_a_member_over_the_allowance_gets_402_while_the_others_continue(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    capped_secret, capped = await world.add_key(account_id=ORG, user_id="u_capped", org_id=ORG,
                                                allowance_micros=20, allowance_tz="Europe/Paris")
    free_secret, _ = await world.add_key(account_id=ORG, user_id="u_free", org_id=ORG, balance=None)
    allow_key = Allowance(ORG, "u_capped", 20, "Europe/Paris").key(world.res.keys.ns,
                                                                   datetime.now(UTC).timestamp())

    served = 0
    refused: Any = None
    for _ in range(40):
        r = await chat(gateway, capped_secret)
        if r.status_code == 402:
            refused = r
            break
        assert r.status_code == 200, r.text
        served += 1
    assert refused is not None, "the allowance never ran out"
    assert served >= 1
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert "allowance" in refused.json()["error"]["message"]
    # Every finished request is counted; nothing stays reserved; the cap was never passed. A request settles just
    # after its answer was sent, so the last one may still be settling when the client has it.
    await settled(world, allow_key)
    held = {k.decode(): int(v) for k, v in (await world.redis.hgetall(allow_key)).items()}
    assert held["reserved"] == 0 and 0 < held["used"] <= 20
    assert 0 < await world.redis.ttl(allow_key) <= 40 * 24 * 3600

    # The org's wallet still has money: another member carries on.
    for _ in range(3):
        r = await chat(gateway, free_secret)
        assert r.status_code == 200, r.text
    # An administrator raises the allowance (keys re-publishes the snapshot): the member spends again.
    await world.put_key(msgspec.structs.replace(capped, allowance_micros=10_000))
    for _ in range(50):
        r = await chat(gateway, capped_secret)
        if r.status_code == 200:
            break
        await asyncio.sleep(0.05)  # the gateway applies the key.changed event as it arrives
    assert r.status_code == 200, r.text


async def test_spend_before_an_allowance_was_set_counts_toward_the_month(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key(account_id=ORG + "2", user_id="u_early", org_id=ORG + "2")
    for _ in range(2):
        r = await chat(gateway, secret)
        assert r.status_code == 200, r.text
    month_key = Allowance(ORG + "2", "u_early", 0).key(world.res.keys.ns, datetime.now(UTC).timestamp())
    await settled(world, month_key)
    spent = int(await world.redis.hget(month_key, "used"))
    assert spent > 0
    # An allowance equal to what was already spent this month leaves nothing to spend.
    await world.put_key(msgspec.structs.replace(snap, allowance_micros=spent))
    for _ in range(50):
        r = await chat(gateway, secret)
        if r.status_code == 402:
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 402 and "allowance" in r.json()["error"]["message"]
