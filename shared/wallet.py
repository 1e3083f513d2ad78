"""The spend guard in Redis: reservations that keep concurrent requests from overspending a wallet or a key quota.

One hash per wallet (`{ns}:wallet:{account_id}`) and per capped key (`{ns}:quota:{key_id}`):
  balance  what billing's ledger says is spendable (wallets) / `limit` (quotas: the cap)
  used     quotas only: what billing has debited against the key so far
  reserved the sum of open reservations (worst-case cost of requests in flight)
  pending  actual cost of finished requests whose debit billing has not yet applied

  available = balance − reserved − pending          (wallet)
  available = limit − used − reserved − pending     (quota)

Protocol:
  1. gateway, before calling upstream: `reserve` the worst-case cost on the wallet (and the key quota if capped)
     in one atomic script; refused → 402 insufficient_quota, no upstream call.
  2. gateway, when the request ends: `settle` = reserved −= worst case, pending += actual; then it publishes
     usage.recorded (settle first, so pending never goes below what billing will remove).
  3. billing, after its transaction commits: `apply_debit` = pending −= actual, balance/used := the ledger's new
     absolute values; guarded by a marker per event id, so a redelivered event changes nothing.
  4. billing, after any credit (top-up, code, refund, adjustment) and at start-up: `set_balance`.
A gateway worker may also hold a lease on a wallet (services/gateway/leases.py): one standing reservation, counted
in `reserved`, from which it admits a busy key's requests in memory; their actual costs move to `pending` (step 2)
before their usage events go out.

What a killed gateway worker held is given back: the wallet's holds hash `{ns}:leases:{account_id}` lists every
lease (renewed while its worker lives) and every reservation the gateway's admit.lua made (unlisted by its
settle), each as "amount:expires_ms[:quota hash]". An entry past its expiry is swept (its amount leaves
`reserved`, and the key quota's) by the next lease renewal or the next admission the wallet or quota would refuse
(services/gateway/lua/sweep_leases.lua). A reservation's entry expires a minute after its marker `{ns}:res:{id}`,
so a settle that comes later still finds no marker and gives nothing back twice. (This class's `reserve` lists
nothing: it is the protocol's reference form, used by tests; its caller gives an expired reservation back with
`sweep_expired`.)

Overspend bound: a request can cost more than it reserved only when the upstream returns more output than the
reservation assumed (it reserves max_tokens, or the model's output cap when the client gave none). The final
balance is therefore never below zero by more than the sum of such excesses of the requests in flight at once; with
max_tokens honoured upstream it is zero. See ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from shared.cache import Keys

_LUA = Path(__file__).with_name("lua")


def _script(name: str) -> str:
    return (_LUA / f"{name}.lua").read_text()


@dataclass(frozen=True)
class Reserved:
    ok: bool
    # which hold refused: "" (none), "wallet", "quota" or "unknown" (no balance loaded for the wallet yet)
    refused: str = ""
    available: int = 0


class SpendGuard:
    RESERVATION_TTL_S = 15 * 60  # longer than the longest request the gateway allows

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._reserve = redis.register_script(_script("reserve"))
        self._settle = redis.register_script(_script("settle"))
        self._apply = redis.register_script(_script("apply_debit"))
        self._set = redis.register_script(_script("set_balance"))

    async def reserve(
        self, reservation_id: str, account_id: str, key_id: str, amount: int, quota_limit: int = 0
    ) -> Reserved:
        """Hold `amount` micro-USD against the wallet (and the key's quota when `quota_limit` > 0)."""
        res = await self._reserve(
            keys=[
                self.keys.wallet(account_id),
                self.keys.quota(key_id),
                self.keys.reservation(reservation_id),
            ],
            args=[amount, quota_limit, self.RESERVATION_TTL_S, account_id, key_id],
        )
        code, available = int(res[0]), int(res[1])
        refused = {0: "", 1: "wallet", 2: "quota", 3: "unknown"}[code]
        return Reserved(ok=code == 0, refused=refused, available=available)

    async def settle(self, reservation_id: str, account_id: str, key_id: str, actual: int) -> None:
        """Replace the reservation by the request's actual cost (idempotent on the reservation id)."""
        await self._settle(
            keys=[
                self.keys.wallet(account_id),
                self.keys.quota(key_id),
                self.keys.reservation(reservation_id),
            ],
            args=[actual],
        )

    async def apply_debit(
        self, event_id: str, account_id: str, key_id: str, actual: int, balance: int, key_used: int | None
    ) -> bool:
        """Billing, after commit: pending −= actual and set the ledger's absolute values. False if already done."""
        done = await self._apply(
            keys=[
                self.keys.wallet(account_id),
                self.keys.quota(key_id),
                f"{self.keys.ns}:applied:{event_id}",
            ],
            args=[actual, balance, -1 if key_used is None else key_used],
        )
        return bool(int(done))

    async def set_balance(self, account_id: str, balance: int) -> None:
        await self._set(keys=[self.keys.wallet(account_id)], args=[balance])

    async def set_quota(self, key_id: str, limit: int, used: int) -> None:
        await self.redis.hset(self.keys.quota(key_id), mapping={"limit": limit, "used": used})

    async def snapshot(self, account_id: str) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.wallet(account_id))
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

    async def sweep_expired(self, account_id: str, key_id: str, reservation_id: str, amount: int) -> None:
        """Give back a reservation whose `{ns}:res:` marker expired without a settle."""
        await self._settle(
            keys=[
                self.keys.wallet(account_id),
                self.keys.quota(key_id),
                self.keys.reservation(reservation_id),
            ],
            args=[0],
        )
