"""`billing-usage`: prices every `usage.recorded` and debits the wallet once per event id, many events per
transaction.

Per batch: one transaction claims the event ids (processed_events), prices the new ones from the prices they
carry, takes plan credit first and the wallet for the rest, COPYs the ledger rows and updates the projections;
it commits; then Redis is told (pending released, new balance) and `usage.charged` / `balance.low` are
published; then the batch is acked. A crash anywhere before the ack means redelivery: the claim makes the
database part a no-op, while the Redis step (guarded by a per-event marker) and the publishes (deterministic
ids, de-duplicated by JetStream) are simply redone from the ledger rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from prometheus_client import Counter, Histogram

from services.billing import ledger, repo, wallets
from services.billing.guard import Applied, BillingGuard
from shared import bus, db
from shared import events as ev
from shared.bus import Publisher

log = logging.getLogger("faregate.billing.consumer")

NAME = "billing-usage"
DEBITED = Counter("faregate_billing_usage_events_total", "Usage events handled by billing", ["outcome"])
CHARGED = Counter("faregate_billing_charged_micros_total", "Micro-USD charged for usage (wallet and plans)")
BATCH_SECONDS = Histogram("faregate_billing_batch_seconds", "Time to apply one batch of usage events",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


def consumer_spec(batch: int, ack_wait_s: float = 15.0) -> bus.ConsumerSpec:
    return bus.ConsumerSpec(
        durable=NAME,
        stream="USAGE",
        filter_subjects=("usage.recorded",),
        # A batch of a few hundred commits in well under a second (FAREGATE_BILLING_USAGE_ACK_WAIT_S).
        ack_wait_s=ack_wait_s,
        # Money must not be dropped after N tries: a failing batch is retried (with backoff) until it commits.
        # Malformed events never get here (terminated on decode) and uncharged ones are recorded as rejected.
        max_deliver=-1,
        max_ack_pending=50_000,
        batch=batch,
        backoff_s=(0.5, 1, 2, 5, 10, 30, 60),
    )


@dataclass
class BatchResult:
    applied: list[Applied] = field(default_factory=list)
    outgoing: list[ev.Event] = field(default_factory=list)
    # For duplicates: (account_id, spendable, version) to re-sync as they are now.
    balances: list[tuple[str, int, int]] = field(default_factory=list)
    new: int = 0
    duplicates: int = 0
    rejected: int = 0


def charged_event(usage_id: str, *, request_id: str, account_id: str, key_id: str, model: str,
                  channel_id: str, wallet_part: int, cost: int, plan: int, balance: int) -> ev.UsageCharged:
    return ev.UsageCharged(event_id=wallets.derived_id(usage_id, "charged"), request_id=request_id,
                           usage_event_id=usage_id, account_id=account_id, key_id=key_id, model=model,
                           channel_id=channel_id, amount_micros=wallet_part,
                           cost_micros=cost, plan_micros=plan, balance_micros=balance)


async def apply_batch(pool: asyncpg.Pool, events: Sequence[ev.UsageRecorded], *,
                      default_threshold: int) -> BatchResult:
    """The database half: everything in one transaction. Returns what to do after commit."""
    out = BatchResult()
    async with pool.acquire() as conn, conn.transaction():
        ids = [e.event_id for e in events]
        new_ids = await db.claim_events(conn, repo.SCHEMA, NAME, ids)
        fresh: list[tuple[ev.UsageRecorded, int, int]] = []
        rejected: list[tuple[str, str]] = []
        dupes: list[str] = []
        for e in events:
            if e.event_id not in new_ids:
                dupes.append(e.event_id)
                continue
            new_ids.discard(e.event_id)  # the same id twice in one batch: the second is a duplicate
            try:
                sell, cost = ledger.price_of(e)
            except ledger.InvalidUsage as exc:
                rejected.append((e.event_id, str(exc)))
                continue
            fresh.append((e, sell, cost))
        if rejected:
            await conn.execute(repo.INSERT_REJECTED, [r[0] for r in rejected], [r[1] for r in rejected])
            log.error("usage events rejected", extra={"count": len(rejected), "event_id": rejected[0][0],
                                                      "reason": rejected[0][1]})
        out.new, out.rejected, out.duplicates = len(fresh), len(rejected), len(dupes)
        if fresh:
            await _debit(conn, fresh, default_threshold, out)
        if dupes:
            await _redo(conn, dupes, out)
    return out


async def _debit(conn: asyncpg.Connection, fresh: list[tuple[ev.UsageRecorded, int, int]],
                 default_threshold: int, out: BatchResult) -> None:
    accounts = sorted({e.account_id for e, _, _ in fresh})
    locked = await wallets.lock(conn, accounts)
    since = min(e.occurred_at for e, _, _ in fresh)
    grants = wallets.grants_from(await conn.fetch(repo.LIVE_GRANTS, accounts, since))
    state = {a: [w["balance_micros"], w["seq"]] for a, w in locked.items()}
    records: list[tuple[Any, ...]] = []
    plan_rows: list[tuple[str, str, int]] = []
    per_key: dict[str, int] = {}
    charges: list[tuple[ev.UsageRecorded, int, int, int, int]] = []  # event, sell, cost, plan part, balance
    for e, sell, cost in fresh:
        st = state[e.account_id]
        plan_part = 0
        if sell > 0 or cost > 0:
            taken, wallet_part = ledger.allocate(sell, grants.get(e.account_id, []), e.model, e.occurred_at)
            plan_part = sell - wallet_part
            plan_rows += [(gid, e.event_id, amt) for gid, amt in taken]
            st[0] -= wallet_part
            st[1] += 1
            records.append(wallets.Entry(
                kind="usage", amount=-wallet_part, event_id=e.event_id, occurred_at=e.occurred_at,
                request_id=e.request_id, key_id=e.key_id, model=e.model, channel_id=e.channel_id, price=sell,
                plan=plan_part, cost=cost,
            ).record(e.account_id, st[1], st[0]))
            if e.key_id and sell:
                per_key[e.key_id] = per_key.get(e.key_id, 0) + sell
        charges.append((e, sell, cost, plan_part, st[0]))
    if records:
        await repo.insert_ledger(conn, records)
    if plan_rows:
        await conn.execute(repo.INSERT_PLAN_DEBITS, [r[0] for r in plan_rows], [r[1] for r in plan_rows],
                           [r[2] for r in plan_rows])
        sums: dict[str, int] = {}
        for gid, _, amt in plan_rows:
            sums[gid] = sums.get(gid, 0) + amt
        await conn.execute(repo.TAKE_FROM_GRANTS, list(sums), list(sums.values()))
    used: dict[str, int] = {}
    if per_key:
        used = {r["key_id"]: r["used_micros"]
                for r in await conn.fetch(repo.ADD_KEY_USAGE, list(per_key), list(per_key.values()))}
    # Low-balance crossings: judged once per account at the end of the batch, against what it may still spend.
    now = wallets.utcnow()
    lows: dict[str, int] = {}
    spend: dict[str, int] = {}
    last_event: dict[str, str] = {e.account_id: e.event_id for e, _, _ in fresh}
    for a in accounts:
        w = locked[a]
        spend[a] = ledger.spendable(state[a][0], grants.get(a, []), now)
        threshold = default_threshold if w["low_threshold_micros"] is None else w["low_threshold_micros"]
        lows[a], low = wallets.low_event(a, w["low_state"], spend[a], threshold, last_event[a])
        if low is not None:
            out.outgoing.append(low)
    versions = {r["account_id"]: r["version"] for r in await conn.fetch(
        repo.UPDATE_WALLETS, accounts, [state[a][0] for a in accounts], [state[a][1] for a in accounts],
        [lows[a] for a in accounts])}
    charged: list[ev.Event] = []
    for e, sell, cost, plan_part, balance in charges:
        if sell:  # a free request left nothing pending in Redis
            out.applied.append(Applied(e.event_id, e.account_id, e.key_id, sell, spend[e.account_id],
                                       versions[e.account_id], used.get(e.key_id, -1)))
        charged.append(charged_event(
            e.event_id, request_id=e.request_id, account_id=e.account_id, key_id=e.key_id, model=e.model,
            channel_id=e.channel_id, wallet_part=sell - plan_part, cost=cost, plan=plan_part,
            balance=balance))
        CHARGED.inc(sell)
    out.outgoing = charged + out.outgoing


async def _redo(conn: asyncpg.Connection, dupes: list[str], out: BatchResult) -> None:
    """Events already in the ledger (a redelivery after commit): redo the after-commit steps only."""
    rows = await conn.fetch(repo.LEDGER_BY_EVENTS, dupes)
    if not rows:
        return
    keys = await conn.fetch(repo.KEY_USAGE, list({r["key_id"] for r in rows if r["key_id"]}))
    used = {k["key_id"]: k["used_micros"] for k in keys}
    out.balances = await wallets.spendable_now(conn, sorted({r["account_id"] for r in rows}))
    for r in rows:
        # version -1: release pending if it was not, but leave the balance to the re-sync of current values.
        out.applied.append(Applied(r["event_id"], r["account_id"], r["key_id"], r["price_micros"], 0, -1,
                                   used.get(r["key_id"], -1)))
        out.outgoing.append(charged_event(
            r["event_id"], request_id=r["request_id"], account_id=r["account_id"], key_id=r["key_id"],
            model=r["model"], channel_id=r["channel_id"], wallet_part=-r["amount_micros"],
            cost=r["cost_micros"], plan=r["plan_micros"], balance=r["balance_after"]))


async def announce(publisher: Publisher, outgoing: Sequence[ev.Event], wait_s: float = 5.0) -> None:
    """Publish a batch's events with every ack in flight at once (nats-py's publish_async: no task per
    message), then wait for all the acks. Any that failed or timed out go through the publisher, which retries
    and spools to disk; the same Nats-Msg-Id makes a second copy a duplicate JetStream drops."""
    if not outgoing:
        return
    futures = []
    for e in outgoing:
        tag = ev.tag_of(type(e))
        futures.append(await publisher.js.publish_async(
            bus.subject(publisher.namespace, tag), ev.encode(e), headers={"Nats-Msg-Id": e.event_id}))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), wait_s)
    failed = [e for e, f in zip(outgoing, futures, strict=True)
              if not f.done() or f.cancelled() or f.exception() is not None]
    for e in failed:
        await publisher.publish(e)


async def after_commit(result: BatchResult, guard: BillingGuard, publisher: Publisher) -> None:
    """Redis and the announcements, concurrently. Both finish before the batch is acked: an event that cannot
    be published is spooled to disk by the publisher, never dropped, and a crash before the ack redoes
    both."""

    async def redis() -> None:
        await guard.apply(result.applied)
        await guard.sync(result.balances)

    await asyncio.gather(redis(), announce(publisher, result.outgoing))


class UsageConsumer:
    """The handler `shared.bus.run_consumer` calls with each fetched batch."""

    def __init__(self, pool: asyncpg.Pool, guard: BillingGuard, publisher: Publisher,
                 default_threshold: int) -> None:
        self.pool = pool
        self.guard = guard
        self.publisher = publisher
        self.default_threshold = default_threshold

    async def __call__(self, batch: Sequence[tuple[Msg, ev.AnyEvent]]) -> None:
        usage = [e for _, e in batch if isinstance(e, ev.UsageRecorded)]
        if not usage:
            return
        with BATCH_SECONDS.time():
            result = await apply_batch(self.pool, usage, default_threshold=self.default_threshold)
            await after_commit(result, self.guard, self.publisher)
        DEBITED.labels("debited").inc(result.new)
        DEBITED.labels("duplicate").inc(result.duplicates)
        DEBITED.labels("rejected").inc(result.rejected)
