"""Billing's side of the Redis spend guard (shared/wallet.py, steps 3 and 4): release what a debit settled and
publish the spendable balance, each write carrying the wallet's version so that concurrent writers (the usage
consumer, a top-up, a hydration) can finish in any order and Redis still ends on the newest balance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from shared.cache import Keys

_LUA = Path(__file__).with_name("lua")


@dataclass(frozen=True)
class Applied:
    """One debited usage event, as Redis needs it."""

    event_id: str
    account_id: str
    key_id: str
    actual: int  # the price the gateway settled into `pending`
    spendable: int
    version: int
    key_used: int  # -1: no key


class BillingGuard:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._apply = redis.register_script((_LUA / "apply_usage.lua").read_text())
        self._sync = redis.register_script((_LUA / "sync_balance.lua").read_text())
        self._used = redis.register_script((_LUA / "sync_key_used.lua").read_text())

    def marker(self, event_id: str) -> str:
        return f"{self.keys.ns}:applied:{event_id}"

    async def apply(self, items: Sequence[Applied], chunk: int = 1_000) -> int:
        """Apply a batch, a script call per `chunk` events; returns how many were new to Redis."""
        applied = 0
        for start in range(0, len(items), chunk):
            keys: list[str] = []
            args: list[int] = []
            for it in items[start:start + chunk]:
                keys += [self.keys.wallet(it.account_id), self.keys.quota(it.key_id),
                         self.marker(it.event_id)]
                args += [it.actual, it.spendable, it.version, it.key_used]
            applied += int(await self._apply(keys=keys, args=args))
        return applied

    async def sync(self, balances: Sequence[tuple[str, int, int]]) -> None:
        """Publish (account_id, spendable, version) for each wallet, pipelined."""
        if not balances:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id, spendable, version in balances:
                await self._sync(keys=[self.keys.wallet(account_id)], args=[spendable, version], client=pipe)
            await pipe.execute()

    async def sync_key_used(self, used: Sequence[tuple[str, int]]) -> None:
        """Publish (key_id, used) for capped-key quotas (start-up: Redis may have lost them)."""
        if used:
            await self._used(keys=[self.keys.quota(k) for k, _ in used], args=[u for _, u in used])
