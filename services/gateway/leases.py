"""Leases: a worker's standing hold on a busy key's spending, so that its requests are admitted without a Redis
round trip each.

A request admitted by admission.py costs a Redis write and a reply on the way to the client's first byte, and a
settle after; for a key that sends many requests a second to one worker, that is a fifth of the worker's CPU per
request (bench.hotpath). A lease does the same work once for many requests:

- The worker asks `lua/lease.lua` to hold an amount of the wallet (part of its `reserved`, like a reservation)
  and, when the key has a concurrency limit, some of its slots (members of the key's in-flight set, counted by
  every worker's admit.lua).
- While the lease is fresh, a request that fits in what is left of it is admitted here, in memory; its worst
  case is held from the lease until it ends.
- When it ends, its actual cost waits in the lease; the next renewal (with the record batch, within
  settings.record_delay_s) moves the costs to the wallet's `pending`, tops the lease up, and only then are their
  usage events published. That is the order of the per-request protocol (shared/wallet.py): billing never
  debits a cost that `pending` does not hold.

What keeps the money exact: the wallet never has more held than its balance allows (the lease is granted from
what is available), a request is only admitted on what the lease still holds, and billing debits every request
from its usage event as before. What a lease gives up, each bounded by its size:
- a balance cut (a refund, an adjustment) reaches the worker at the lease's next renewal, which gives back what
  the wallet is now short of; until then the lease may still be spent;
- a killed worker's lease stays held until it expires (LEASE_TTL_S after its last renewal); it is then given back
  by the next lease renewal or the next admission the wallet would refuse (lua/sweep_leases.lua).

Only keys with no rate limit, no spending cap and no organisation allowance are leased (those need Redis per
request), and only once a key is busy on this worker (LEASE_AFTER requests within a second).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.cache import Keys
from shared.resp import Resp

log = logging.getLogger("faregate.gateway.leases")

_LUA = Path(__file__).with_name("lua")

LEASE_TTL_S = 60.0  # a lease its worker stopped renewing (killed) is given back this long after the last renewal
FRESH_S = 2.0  # a lease admits only this long after Redis last confirmed it (a balance cut is learnt by then)
IDLE_S = 10.0  # a lease with no request this long is given back
KEEP_EVERY_S = LEASE_TTL_S / 4  # how often held leases are renewed (or given back) when no request does it
LEASE_AFTER = 8  # requests of one key within a second on this worker before it is leased
LEASE_REQUESTS = 32  # a lease holds the worst case of this many requests (or twice the most in flight)
LEASE_SHARE = 4  # ... and never more than this share of the wallet's available amount, or of the key's slots


@dataclass(slots=True)
class Lease:
    """One key's lease, as this worker knows it."""

    account_id: str
    key_id: str
    limit: int  # the key's concurrency limit (0: none)
    unit: int = 0  # the largest worst case admitted on it lately: what the lease is sized by
    held: int = 0  # the amount Redis holds for it (at the last reply)
    slots: int = 0  # the concurrency slots Redis holds for it
    out: int = 0  # worst cases of the requests admitted on it that have not ended
    busy: int = 0  # those requests
    peak: int = 0  # the most in flight since the last renewal
    spent: int = 0  # actual costs of ended requests, not yet sent to Redis
    sending: int = 0  # sent, not yet answered
    available: int = 0  # the wallet's available amount at the last reply
    fresh_until: float = 0.0  # monotonic
    used_at: float = 0.0  # monotonic, the last request admitted on it
    wanted: bool = False  # to be renewed with the next batch

    def room(self) -> int:
        return self.held - self.out - self.spent - self.sending


@dataclass
class Leases:
    redis: Resp
    keys: Keys
    inflight_ttl_ms: int
    worker: str = field(default_factory=lambda: secrets.token_hex(6))
    _leases: dict[str, Lease] = field(default_factory=dict)
    _demand: dict[str, tuple[float, int]] = field(default_factory=dict)  # key id -> (second started, requests)

    def __post_init__(self) -> None:
        prelude = (_LUA / "sweep_leases.lua").read_text()
        self._renew = self.redis.script(prelude + (_LUA / "lease.lua").read_text())

    # --- the request path --------------------------------------------------------------------------------

    def admit(self, key_id: str, amount: int, limit: int) -> bool:
        """Hold `amount` on the key's lease: True when it fits (the request is admitted), else False (admission
        goes to Redis as without a lease)."""
        lease = self._leases.get(key_id)
        if lease is None or lease.limit != limit:
            return False
        now = time.monotonic()
        if now >= lease.fresh_until or lease.room() < amount or (limit and lease.busy >= lease.slots):
            return False
        lease.out += amount
        lease.busy += 1
        lease.peak = max(lease.peak, lease.busy)
        lease.unit = max(lease.unit, amount)
        lease.used_at = now
        return True

    def admitted_by_redis(self, account_id: str, key_id: str, amount: int, limit: int, available: int) -> None:
        """A leasable request was admitted by Redis: count the key's demand, and lease it once it is busy (or
        renew a lease that went stale, or whose key's limit changed)."""
        lease = self._leases.get(key_id)
        if lease is not None:
            lease.limit, lease.available, lease.wanted = limit, available, True
            lease.unit = max(lease.unit, amount)
            return
        now = time.monotonic()
        started, count = self._demand.get(key_id, (now, 0))
        if now - started > 1.0:
            started, count = now, 0
        count += 1
        if count < LEASE_AFTER:
            self._demand[key_id] = (started, count)
            return
        self._demand.pop(key_id, None)
        self._leases[key_id] = Lease(account_id, key_id, limit, unit=amount, available=available, used_at=now,
                                     wanted=True)

    def ended(self, key_id: str, amount: int, cost: int) -> None:
        """A request admitted on the lease ended, costing `cost`: it goes to Redis with the next renewal."""
        lease = self._leases.get(key_id)
        if lease is None:
            # The lease was dropped (its renewal failed): the usage event still has billing debit the cost.
            return
        lease.out -= amount
        lease.busy -= 1
        lease.spent += cost
        lease.wanted = True

    # --- renewals ----------------------------------------------------------------------------------------

    def renew(self) -> asyncio.Future[Any] | None:
        """Send every wanted lease's renewal now (in one write, with the record batch); the returned future is
        done once all are answered and applied here (or failed), after which the costs they carried are in
        `pending` and the requests' usage events may go. None: nothing to send."""
        sent = [self._send(lease) for lease in self._leases.values() if lease.wanted]
        if not sent:
            return None
        return asyncio.ensure_future(self._replies(sent))

    def _send(self, lease: Lease, release: bool = False) -> tuple[Lease, list[str], list[int | str], int, Any]:
        lease.wanted = False
        spent, lease.spent = lease.spent, 0
        lease.sending += spent
        if release:
            want = want_slots = 0
        else:
            want = min(max(LEASE_REQUESTS, 2 * lease.peak) * lease.unit, (lease.available + lease.held) // LEASE_SHARE)
            if want < lease.unit:
                want = 0  # a wallet this low is better admitted request by request
            want = max(want, lease.out)  # never below what requests in flight hold
            want_slots = min(max(LEASE_AFTER, 2 * lease.peak), lease.limit // LEASE_SHARE) if lease.limit else 0
        lease.peak = lease.busy
        keys = [self.keys.wallet(lease.account_id), self.keys.leases(lease.account_id),
                self.keys.rate("key", lease.key_id, "inflight")]
        args: list[int | str] = [f"{self.worker}:{lease.key_id}", spent, want, want_slots, lease.limit,
                                 int(time.time() * 1000), int(LEASE_TTL_S * 1000), self.inflight_ttl_ms,
                                 min(lease.busy, lease.slots) if lease.limit else 0]
        try:
            fut: Any = self._renew.send(keys, args)
        except OSError as exc:  # not connected right now
            fut = exc
        return lease, keys, args, spent, fut

    async def _replies(self, sent: list[tuple[Lease, list[str], list[int | str], int, Any]]) -> None:
        for lease, keys, args, spent, fut in sent:
            try:
                if isinstance(fut, OSError):
                    raise fut
                held, available, slots = (int(x) for x in await self._renew.reply(fut, keys, args))
            except Exception as exc:  # Redis unreachable or stalled: the lease is not used until Redis answers
                log.warning("lease renewal failed; admitting through Redis", extra={"error": repr(exc)})
                # What Redis holds is unknown now; it expires there if this worker cannot give it back.
                if self._leases.get(lease.key_id) is lease:
                    del self._leases[lease.key_id]
                continue
            lease.sending -= spent
            lease.held, lease.available, lease.slots = held, available, slots
            lease.fresh_until = time.monotonic() + FRESH_S if held > 0 else 0.0
            if held == 0 and lease.busy == 0 and self._leases.get(lease.key_id) is lease:
                del self._leases[lease.key_id]  # given back, or nothing to hold: leased again once busy

    async def keep(self) -> None:
        """Renew held leases that no request renewed, and give back those that went idle (KEEP_EVERY_S)."""
        now = time.monotonic()
        # Demand counts of keys that never got busy: dropped once their second is over, so a worker serving many
        # quiet keys keeps none of them.
        self._demand = {k: v for k, v in self._demand.items() if now - v[0] <= 1.0}
        sent = []
        for key_id, lease in list(self._leases.items()):
            idle = lease.busy == 0 and now - lease.used_at > IDLE_S
            if idle:
                del self._leases[key_id]
            sent.append(self._send(lease, release=idle))
        if sent:
            await self._replies(sent)

    async def keep_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), KEEP_EVERY_S)
            except TimeoutError:
                try:
                    await self.keep()
                except Exception:
                    log.exception("lease upkeep failed")

    async def release(self) -> None:
        """Give back every lease with no request in flight (shutdown, after the last requests were recorded);
        one with a request still going expires on its own."""
        quiet = [lease for lease in self._leases.values() if lease.busy == 0]
        for lease in quiet:
            del self._leases[lease.key_id]
        sent = [self._send(lease, release=True) for lease in quiet]
        if sent:
            await self._replies(sent)
