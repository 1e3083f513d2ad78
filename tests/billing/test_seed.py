"""The demo seed `faregate dev` runs: credits once however often it runs; the gateway can spend at once."""

from __future__ import annotations

from services.billing import seed
from shared.config import CommonSettings
from shared.events import new_id
from shared.runtime import Resources
from shared.wallet import SpendGuard
from tests.billing.conftest import balance


async def test_seeding_twice_credits_once_and_fills_redis(common: CommonSettings,
                                                          resources: Resources) -> None:
    assert resources.redis
    account = new_id()
    assert await seed.seed_demo(common, account_id=account, amount_micros=10_000_000) == 10_000_000
    assert await seed.seed_demo(common, account_id=account, amount_micros=10_000_000) == 10_000_000
    assert await balance(resources, account) == 10_000_000
    guard = SpendGuard(resources.redis, resources.keys)
    assert (await guard.reserve(new_id(), account, "k", 10_000_000)).ok
