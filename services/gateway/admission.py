"""Admission: rate limits, concurrency and the spend-guard reservation, in one Redis round trip per request.

`lua/admit.lua` checks every limit and the wallet (and key quota) and writes nothing unless all pass;
`lua/finish.lua` undoes the in-flight entry, corrects the token windows and settles the reservation. Both keep
the hash fields of `shared/wallet.py`, so billing's `apply_debit` matches what the gateway reserved and
settled.

When Redis is unreachable the gateway stays up (decided in ARCHITECTURE terms, tested in
tests/gateway/test_redis_outage.py):
- rate limits and concurrency fail OPEN: they protect upstream capacity, and losing them for the length of an
  outage costs less than refusing every paying client;
- the spend guard fails CLOSED for wallets this worker has never seen, and degrades for those it has: each
  worker remembers the last available amount Redis answered per account and keeps reserving against that local
  copy (never above it). Billing still debits from the usage events, so the ledger stays exact; the possible
  overspend during the outage is bounded by (workers x the last known available amount), and no wallet this
  worker never saw funded can spend at all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client import Counter

from services.gateway.leases import Leases
from shared.cache import Keys
from shared.resp import Resp

log = logging.getLogger("faregate.gateway.admission")

_LUA = Path(__file__).with_name("lua")

REDIS_DEGRADED = Counter(
    "faregate_gateway_redis_degraded_total",
    "Requests admitted or refused without Redis (limits open, local spend copy)",
    ["outcome"],
)

RESERVATION_TTL_S = 15 * 60
ALLOWANCE_TTL_S = 40 * 24 * 3600  # a month's allowance hash outlives its month, then goes
INFLIGHT_TTL_MS = 15 * 60 * 1000  # an in-flight entry left by a killed pod stops counting after this

SCOPES = {
    10: ("key", "rpm"),
    11: ("key", "tpm"),
    12: ("key", "concurrency"),
    13: ("account", "rpm"),
    14: ("account", "tpm"),
    15: ("account", "concurrency"),
}


@dataclass(frozen=True)
class Limits:
    key_rpm: int = 0
    key_tpm: int = 0
    key_concurrency: int = 0
    account_rpm: int = 0
    account_tpm: int = 0
    account_concurrency: int = 0


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@dataclass(frozen=True)
class Allowance:
    """An organisation member's monthly credit allowance (issue 11; from the key snapshot), held like a key
    quota in `{ns}:allow:{org}:{user}:{yyyymm}`, the month taken in the org's time zone: a new month is a new
    hash, so the allowance resets at the org's midnight on the 1st."""

    org_id: str
    user_id: str
    limit: int
    tz: str = "UTC"

    def key(self, ns: str, now: float) -> str:
        month = datetime.fromtimestamp(now, _zone(self.tz)).strftime("%Y%m")
        return f"{ns}:allow:{self.org_id}:{self.user_id}:{month}"


@dataclass
class Ticket:
    """What admission held for one request; handed back to `finish`."""

    request_id: str
    account_id: str
    key_id: str
    amount: int
    token_estimate: int
    window: int  # minute index the token windows were charged in
    degraded: bool = False  # admitted without Redis (local spend copy)
    key_rpm_used: int = 0
    key_tpm_used: int = 0
    reset_ms: int = 0
    finished: bool = False
    allowance_key: str = ""  # the allowance hash this request holds against ("" = none)
    counted: int = 0  # what admit.lua counted (finish.lua's ARGV[4]: only the limits set)
    leased: bool = False  # admitted on the key's lease (leases.py): it ends there, not in finish.lua


# Overlapped admission (Admission.overlap_safe): the last balance seen must cover this many such requests.
OVERLAP_HEADROOM = 20


@dataclass(frozen=True)
class Settling:
    """A settle on its way: the command's keys and args, and its reply's future (None: not sent yet)."""

    keys: list[str]
    args: list[int | str]
    sent: asyncio.Future[Any] | None


@dataclass(frozen=True, slots=True)
class Admitting:
    """An admission on its way (Admission.send_admit): what the verdict needs, and its reply's future (None:
    not sent yet)."""

    request_id: str
    account_id: str
    key_id: str
    amount: int
    token_estimate: int
    window: int
    allowance_key: str
    keys: list[str]
    args: list[int | str]
    sent: asyncio.Future[Any] | None
    counted: int = 0


def counted(limits: Limits) -> int:
    """The windows and in-flight sets admit.lua keeps for these limits, as finish.lua's bits."""
    return ((1 if limits.key_tpm else 0) | (2 if limits.account_tpm else 0)
            | (4 if limits.key_concurrency else 0) | (8 if limits.account_concurrency else 0))


@dataclass(frozen=True)
class Verdict:
    ticket: Ticket | None
    # refused: "wallet" | "quota" | "unknown" | "<scope>_<kind>" (e.g. "key_rpm"); "" when admitted
    refused: str = ""
    available: int = 0
    retry_after_ms: int = 0


@dataclass
class Admission:
    redis: Resp  # the lean pipelined client: two script calls per request are most of the gateway's Redis work
    keys: Keys
    _last_available: dict[str, int] = field(default_factory=dict)
    _local_held: dict[str, int] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)  # key id -> this worker's admitted, unsettled
    leases: Leases = field(init=False)

    def overlap_safe(self, account_id: str, key_id: str, amount: int, quota_limit: int, limits: Limits,
                     allowance: Allowance | None) -> bool:
        """Whether this request's admission may run while its upstream call starts (the client waits for one
        round trip instead of two). Only when nothing this worker knows of is near a refusal: the balance
        Redis last reported covers OVERLAP_HEADROOM such requests, no rate limit, key quota or allowance applies,
        and few of the key's requests are in flight here. A refusal then cancels an upstream call already
        made: rare, and never charged to the client."""
        if limits.key_rpm or limits.key_tpm or limits.account_rpm or limits.account_tpm:
            return False
        if limits.account_concurrency or quota_limit or (allowance is not None and allowance.limit):
            return False
        known = self._last_available.get(account_id)
        if known is None or known < OVERLAP_HEADROOM * amount:
            return False
        return not limits.key_concurrency or self._in_flight.get(key_id, 0) * 4 < limits.key_concurrency

    def __post_init__(self) -> None:
        self._admit = self.redis.script((_LUA / "sweep_leases.lua").read_text() + (_LUA / "admit.lua").read_text())
        self._finish = self.redis.script((_LUA / "finish.lua").read_text())
        self.leases = Leases(self.redis, self.keys, INFLIGHT_TTL_MS)

    def admit_leased(self, request_id: str, account_id: str, key_id: str, amount: int, token_estimate: int,
                     concurrency_limit: int) -> Ticket | None:
        """Admit on the key's lease, in memory; None when it has none that fits (admission goes to Redis)."""
        if not self.leases.admit(key_id, amount, concurrency_limit):
            return None
        return Ticket(request_id, account_id, key_id, amount, token_estimate, window=0, leased=True)

    def lease_wanted(self, ticket: Ticket, concurrency_limit: int) -> None:
        """A request that could have been leased was admitted by Redis (leases.py decides when to lease)."""
        self.leases.admitted_by_redis(ticket.account_id, ticket.key_id, ticket.amount, concurrency_limit,
                                      self._last_available.get(ticket.account_id, 0))

    def _keys(self, account_id: str, key_id: str, request_id: str, window: int) -> list[str]:
        k = self.keys
        w = str(window)
        return [
            k.wallet(account_id),
            k.quota(key_id),
            k.reservation(request_id),
            k.rate("key", key_id, "rpm:" + w),
            k.rate("key", key_id, "tpm:" + w),
            k.rate("key", key_id, "inflight"),
            k.rate("acct", account_id, "rpm:" + w),
            k.rate("acct", account_id, "tpm:" + w),
            k.rate("acct", account_id, "inflight"),
            k.leases(account_id),
        ]

    def send_admit(
        self,
        *,
        request_id: str,
        account_id: str,
        key_id: str,
        amount: int,
        quota_limit: int,
        token_estimate: int,
        limits: Limits,
        allowance: Allowance | None = None,
    ) -> Admitting:
        """Queue the admission on the Redis connection now, without waiting (so it can travel beside the upstream
        call with no task of its own); `verdict` reads the answer."""
        now_ms = int(time.time() * 1000)
        window = now_ms // 60000
        keys = self._keys(account_id, key_id, request_id, window)
        allowance_key = ""
        if allowance is not None:
            allowance_key = allowance.key(self.keys.ns, now_ms / 1000)
            keys += [allowance_key, self.keys.reservation(request_id) + ":allow"]
        args: list[int | str] = [
            amount,
            quota_limit,
            RESERVATION_TTL_S,
            now_ms,
            request_id,
            token_estimate,
            INFLIGHT_TTL_MS,
            limits.key_rpm,
            limits.key_tpm,
            limits.key_concurrency,
            limits.account_rpm,
            limits.account_tpm,
            limits.account_concurrency,
            allowance.limit if allowance is not None else 0,
            ALLOWANCE_TTL_S,
        ]
        try:
            # Written at once when the connection is idle (a quiet worker): the upstream call that follows costs
            # a loop turn, which the verdict, last to arrive, would otherwise wait out too.
            sent: asyncio.Future[Any] | None = self._admit.send(keys, args, now=True)
        except OSError:  # not connected right now: `verdict` connects and sends it
            sent = None
        return Admitting(request_id, account_id, key_id, amount, token_estimate, window, allowance_key, keys, args,
                         sent, counted(limits))

    async def verdict(self, a: Admitting) -> Verdict:
        """The outcome of `send_admit`; admitted on the local balance copy when Redis cannot answer."""
        try:
            if a.sent is None:
                out = await self._admit(keys=a.keys, args=a.args)
            else:
                out = await self._admit.reply(a.sent, a.keys, a.args)
        except OSError as exc:  # RespConnectionError / RespTimeout: Redis unreachable or stalled
            return self._admit_locally(a.request_id, a.account_id, a.key_id, a.amount, a.token_estimate, a.window,
                                       exc)
        code, available, rpm_used, tpm_used, retry_ms = (int(x) for x in out)
        if self._local_held:
            self.redis_recovered()
        if code == 0:
            self._last_available[a.account_id] = available
            self._in_flight[a.key_id] = self._in_flight.get(a.key_id, 0) + 1
            return Verdict(
                Ticket(
                    a.request_id,
                    a.account_id,
                    a.key_id,
                    a.amount,
                    a.token_estimate,
                    a.window,
                    key_rpm_used=rpm_used,
                    key_tpm_used=tpm_used,
                    reset_ms=retry_ms,
                    allowance_key=a.allowance_key,
                    counted=a.counted,
                ),
                available=available,
            )
        if code in SCOPES:
            scope, kind = SCOPES[code]
            return Verdict(None, refused=f"{scope}_{kind}", retry_after_ms=retry_ms)
        refused = {1: "wallet", 2: "quota", 3: "unknown", 4: "allowance"}[code]
        if refused != "unknown":
            self._last_available[a.account_id] = available
        return Verdict(None, refused=refused, available=available)

    def _admit_locally(
        self,
        request_id: str,
        account_id: str,
        key_id: str,
        amount: int,
        token_estimate: int,
        window: int,
        exc: BaseException,
    ) -> Verdict:
        known = self._last_available.get(account_id)
        if known is None:
            REDIS_DEGRADED.labels("refused").inc()
            log.warning("redis unreachable and no local balance copy; refusing", extra={"error": repr(exc)})
            return Verdict(None, refused="unavailable")
        held = self._local_held.get(account_id, 0)
        if known - held < amount or known - held <= 0:
            REDIS_DEGRADED.labels("refused").inc()
            return Verdict(None, refused="wallet", available=known - held)
        self._local_held[account_id] = held + amount
        REDIS_DEGRADED.labels("admitted").inc()
        return Verdict(
            Ticket(request_id, account_id, key_id, amount, token_estimate, window, degraded=True),
            available=known - held - amount,
        )

    async def finish(self, ticket: Ticket, actual_cost: int, actual_tokens: int) -> None:
        """Settle once; safe to call again (the reservation marker makes the Redis side idempotent)."""
        await self.settled(self.send_finish(ticket, actual_cost, actual_tokens))

    def send_finish(self, ticket: Ticket, actual_cost: int, actual_tokens: int) -> Settling | None:
        """Start settling now, without waiting: the settle command is queued on the Redis connection at once, so
        it reaches Redis before any admission sent after it (a sequential client's next request must find its
        concurrency slot and reservation given back). Await `settled` with what this returns."""
        if ticket.finished:
            return None
        ticket.finished = True
        if ticket.leased:
            self.leases.ended(ticket.key_id, ticket.amount, actual_cost)  # sent with the next renewal
            return None
        if ticket.degraded:
            # The local copy keeps the actual spend: it stays spent until Redis (and billing) say otherwise.
            self._local_held[ticket.account_id] = (
                self._local_held.get(ticket.account_id, 0) - ticket.amount + actual_cost
            )
            return None
        left = self._in_flight.get(ticket.key_id, 0) - 1
        if left > 0:
            self._in_flight[ticket.key_id] = left
        else:
            self._in_flight.pop(ticket.key_id, None)
        keys = self._keys(ticket.account_id, ticket.key_id, ticket.request_id, ticket.window)
        held = [keys[0], keys[1], keys[2], keys[4], keys[7], keys[5], keys[8], keys[9]]
        if ticket.allowance_key:
            held += [ticket.allowance_key, self.keys.reservation(ticket.request_id) + ":allow"]
        args: list[int | str] = [actual_cost, ticket.request_id, actual_tokens - ticket.token_estimate,
                                 ticket.counted]
        try:
            sent = self._finish.send(held, args)
        except OSError:  # not connected right now: `settled` connects and sends it
            sent = None
        return Settling(held, args, sent)

    async def settled(self, settling: Settling | None) -> None:
        if settling is None:
            return
        try:
            if settling.sent is None:
                await self._finish(keys=settling.keys, args=settling.args)
            else:
                await self._finish.reply(settling.sent, settling.keys, settling.args)
        except OSError as exc:  # RespConnectionError / RespTimeout: Redis unreachable or stalled
            # The reservation marker expires and billing's debit still lands from the usage event.
            log.warning("settle failed; reservation will expire", extra={"error": repr(exc)})

    def redis_recovered(self) -> None:
        """Forget the local spend copies once Redis answers again: it is the truth from then on."""
        self._local_held.clear()
