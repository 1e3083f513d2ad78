"""Keeping Redis's spendable balances in step with the ledger outside the usage path: loading one wallet on
the gateway's request, hydrating every wallet at start-up, and taking expired plans out of what a wallet may
spend."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from services.billing import repo, wallets
from services.billing.guard import BillingGuard
from shared.bus import Publisher

log = logging.getLogger("faregate.billing.hydrate")


async def load(pool: asyncpg.Pool, guard: BillingGuard, account_id: str) -> int:
    """Publish one wallet's spendable balance (creating an empty wallet for an account billing has not seen,
    so the gateway gets a definite 0 instead of asking again) and return it."""
    async with pool.acquire() as conn:
        await conn.execute(repo.ENSURE_WALLETS, [account_id])
        rows = await wallets.spendable_now(conn, [account_id])
    await guard.sync(rows)
    return rows[0][1]


async def hydrate_all(pool: asyncpg.Pool, guard: BillingGuard, chunk: int = 2_000) -> int:
    """Publish every wallet's balance and every key's charged total (start-up: Redis may have been flushed or
    never filled). Returns the number of wallets."""
    after = ""
    while True:
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT key_id, used_micros FROM billing.key_usage WHERE key_id > $1"
                                    " ORDER BY key_id LIMIT $2", after, chunk)
        if not rows:
            break
        await guard.sync_key_used([(r["key_id"], r["used_micros"]) for r in rows])
        after = rows[-1]["key_id"]
    count = 0
    after = ""
    while True:
        async with pool.acquire() as conn:
            ids = [r["account_id"] for r in await conn.fetch(
                "SELECT account_id FROM billing.wallets WHERE account_id > $1 ORDER BY account_id LIMIT $2",
                after, chunk)]
            if not ids:
                return count
            rows = await wallets.spendable_now(conn, ids)
        await guard.sync(rows)
        count += len(rows)
        after = ids[-1]


async def expire_plans_once(pool: asyncpg.Pool, guard: BillingGuard, publisher: Publisher | None,
                            default_threshold: int) -> int:
    async with pool.acquire() as conn:
        accounts = [r["account_id"] for r in await conn.fetch(repo.EXPIRED_UNSYNCED)]
    for account_id in accounts:
        async with pool.acquire() as conn, conn.transaction():
            posted = await wallets.touch(conn, account_id, default_threshold=default_threshold,
                                         cause=f"plan-expiry:{account_id}:{wallets.utcnow().isoformat()}")
            await conn.execute(repo.MARK_EXPIRY_SYNCED, account_id)
        await guard.sync([(account_id, posted.spendable, posted.version)])
        if posted.low is not None and publisher is not None:
            await publisher.publish(posted.low)
    return len(accounts)


async def expire_plans_forever(pool: asyncpg.Pool, guard: BillingGuard, publisher: Publisher | None,
                               default_threshold: int, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await expire_plans_once(pool, guard, publisher, default_threshold)
        except Exception:  # the next round retries; a failed round only delays an expiry
            log.exception("plan expiry scan failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
