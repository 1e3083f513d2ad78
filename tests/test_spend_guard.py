"""The Redis spend guard: concurrent reservations never exceed what the wallet or a key quota holds."""

from __future__ import annotations

import asyncio

from shared.events import ModelPrice, new_id
from shared.pricing import cost_micros
from shared.runtime import Resources
from shared.wallet import SpendGuard


def test_price_rounds_once_half_up() -> None:
    price = ModelPrice(input=150_000, output=600_000, cached_input=75_000)  # gpt-4o-mini: $0.15 / $0.60 per M
    # 1000 prompt (200 cached) + 500 output = 800×0.15 + 200×0.075 + 500×0.6 micro-USD = 120 + 15 + 300
    assert cost_micros(price, prompt_tokens=1000, cached_tokens=200, completion_tokens=500) == 435
    # 3 output tokens at $0.60/M = 1.8 micros -> 2; group ×1.5 -> 2.7 -> 3; 10% off -> 2.43 -> 2
    assert cost_micros(price, prompt_tokens=0, completion_tokens=3) == 2
    assert cost_micros(price, prompt_tokens=0, completion_tokens=3, group_ratio_ppm=1_500_000) == 3
    assert (
        cost_micros(
            price, prompt_tokens=0, completion_tokens=3, group_ratio_ppm=1_500_000, discount_ppm=100_000
        )
        == 2
    )


async def test_concurrent_reservations_never_overspend(resources: Resources) -> None:
    assert resources.redis
    guard = SpendGuard(resources.redis, resources.keys)
    account, key = new_id(), new_id()
    await guard.set_balance(account, 1_000)
    results = await asyncio.gather(*(guard.reserve(new_id(), account, key, 300) for _ in range(50)))
    assert sum(r.ok for r in results) == 3
    assert {r.refused for r in results if not r.ok} == {"wallet"}


async def test_settle_then_debit_leaves_the_ledger_balance(resources: Resources) -> None:
    assert resources.redis
    guard = SpendGuard(resources.redis, resources.keys)
    account, key, rid, ev = new_id(), new_id(), new_id(), new_id()
    await guard.set_balance(account, 1_000)
    assert (await guard.reserve(rid, account, key, 600, quota_limit=700)).ok
    assert not (await guard.reserve(new_id(), account, key, 200, quota_limit=700)).ok  # quota: 700-600 < 200
    await guard.settle(rid, account, key, 250)
    await guard.settle(rid, account, key, 250)  # a second settle is a no-op
    assert await guard.snapshot(account) == {"balance": 1_000, "reserved": 0, "pending": 250}
    assert await guard.apply_debit(ev, account, key, 250, balance=750, key_used=250)
    assert not await guard.apply_debit(ev, account, key, 250, balance=750, key_used=250)
    assert await guard.snapshot(account) == {"balance": 750, "reserved": 0, "pending": 0}


async def test_unknown_wallet_is_reported_not_refused_as_empty(resources: Resources) -> None:
    assert resources.redis
    guard = SpendGuard(resources.redis, resources.keys)
    r = await guard.reserve(new_id(), new_id(), new_id(), 1)
    assert not r.ok and r.refused == "unknown"
