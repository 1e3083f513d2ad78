"""The spend bound, end to end through the Redis spend guard and the billing consumer: many concurrent
requests against a wallet that affords only a few. The gateway's half (reserve the worst case, settle the
actual, publish usage.recorded) is played here with the real SpendGuard and the real publisher; billing's half
is the real `billing-usage` consumer on JetStream.

Documented bound (shared/wallet.py): the final balance is never below zero by more than the sum of the amounts
by which requests exceeded their reservation (upstreams that ignore max_tokens); with none, never below zero.
"""

from __future__ import annotations

import asyncio
import random

from services.billing.funding import Funding
from services.billing.guard import BillingGuard
from shared.events import ModelPrice, new_id
from shared.runtime import Resources
from shared.wallet import SpendGuard
from tests.billing.conftest import balance, credit, running_consumer, usage, wait_for

PRICE = ModelPrice(input=0, output=1_000_000)  # 1 micro-USD per output token: cost = tokens


async def _storm(resources: Resources, spend_guard: SpendGuard, account: str, n: int, worst: int,
                 overshoot: int) -> tuple[list[int], int]:
    """n concurrent requests; returns the actual costs of those admitted and the sum of their excesses."""
    assert resources.publisher
    rng = random.Random(7)
    admitted: list[int] = []
    excess = 0

    gate = asyncio.Semaphore(50)  # requests in flight at once (the Redis client's pool is bounded too)

    async def request(i: int) -> None:
        async with gate:
            await one(i)

    async def one(i: int) -> None:
        nonlocal excess
        rid = new_id()
        await asyncio.sleep(rng.random() * 0.02)
        held = await spend_guard.reserve(rid, account, f"key-{account}", worst)
        if not held.ok:
            assert held.refused == "wallet"  # the gateway answers 402 insufficient_quota, no upstream call
            return
        await asyncio.sleep(rng.random() * 0.05)  # the upstream call
        actual = rng.randint(1, worst)
        if overshoot and i % 3 == 0:
            actual = worst + rng.randint(1, overshoot)  # the upstream produced more than max_tokens
        excess += max(0, actual - worst)
        await spend_guard.settle(rid, account, f"key-{account}", actual)
        admitted.append(actual)
        assert resources.publisher
        resources.publisher.publish_nowait(usage(account, key_id=f"key-{account}", price=PRICE,
                                                 prompt_tokens=0,
                                                 completion_tokens=actual, reservation_id=rid,
                                                 reserved_micros=worst))

    await asyncio.gather(*(request(i) for i in range(n)))
    await resources.publisher.flush()
    return admitted, excess


async def _settled(resources: Resources, account: str, admitted: int) -> None:
    assert resources.pool

    async def done() -> bool:
        n = await resources.pool.fetchval(  # type: ignore[union-attr]
            "SELECT count(*) FROM billing.ledger WHERE account_id = $1 AND kind = 'usage'", account)
        return bool(n == admitted)

    await wait_for(done, within_s=30)


async def test_concurrent_requests_never_overspend_and_the_ledger_is_exact(
        resources: Resources, funding: Funding, guard: BillingGuard, spend_guard: SpendGuard) -> None:
    assert resources.pool
    account = new_id()
    await credit(funding, account, 10_000)  # affords 10 requests at their worst case of 1_000
    async with running_consumer(resources, guard, batch=50):
        admitted, excess = await _storm(resources, spend_guard, account, n=150, worst=1_000, overshoot=0)
        await _settled(resources, account, len(admitted))
    assert excess == 0
    assert len(admitted) >= 10  # what the balance covers at worst case; more as actual costs free room
    final = await balance(resources, account)
    assert final >= 0
    assert final == 10_000 - sum(admitted)
    charged = await resources.pool.fetchval(
        "SELECT -sum(amount_micros) FROM billing.ledger WHERE account_id = $1 AND kind = 'usage'", account)
    assert charged == sum(admitted)
    snap = await spend_guard.snapshot(account)
    assert (snap["balance"], snap["reserved"], snap["pending"]) == (final, 0, 0)


async def test_overshooting_upstreams_stay_within_the_documented_bound(
        resources: Resources, funding: Funding, guard: BillingGuard, spend_guard: SpendGuard) -> None:
    assert resources.pool
    account = new_id()
    await credit(funding, account, 10_000)
    async with running_consumer(resources, guard, batch=50):
        admitted, excess = await _storm(resources, spend_guard, account, n=150, worst=1_000, overshoot=400)
        await _settled(resources, account, len(admitted))
    final = await balance(resources, account)
    assert excess > 0
    assert final >= -excess
    assert final == 10_000 - sum(admitted)  # whatever happened, every token was charged exactly once
    snap = await spend_guard.snapshot(account)
    assert (snap["balance"], snap["reserved"], snap["pending"]) == (final, 0, 0)
    # What is left is exactly what may still be reserved: one micro more is refused before any upstream call.
    assert not (await spend_guard.reserve(new_id(), account, f"key-{account}", max(final, 0) + 1)).ok
