"""The demo wallet for `faregate dev`: credited once (a fixed reference), its balance published to Redis."""

from __future__ import annotations

from services.billing import hydrate, wallets
from services.billing.config import BillingSettings
from services.billing.guard import BillingGuard
from shared import cache, db
from shared.cache import Keys
from shared.config import CommonSettings


async def seed_demo(common: CommonSettings, *, account_id: str, amount_micros: int) -> int:
    """Credit `amount_micros` to the demo account the first time; return the wallet's spendable balance."""
    pool = await db.create_pool(common.database_url, max_size=2)
    redis = cache.client(common.redis_url)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await wallets.post(conn, account_id, [wallets.Entry(
                kind="seed", amount=amount_micros, event_id=wallets.derived_id("demo-seed", account_id),
                reference="demo-seed", reason="demo credit")],
                default_threshold=BillingSettings().low_balance_default_micros)
        return await hydrate.load(pool, BillingGuard(redis, Keys(common.namespace)), account_id)
    finally:
        await redis.aclose()
        await pool.close()
