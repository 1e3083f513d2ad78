"""Apply a batch of events to the usage tables in one transaction, idempotently on the event id.

usage.recorded becomes one request-log row plus aggregate increments. usage.charged fills the row's cost and
adds it to the aggregates; it may arrive before its usage.recorded (billing and usage consume independently),
in which case it waits in `pending_charges` and the row takes it when it lands. Billing events also carry the
wallet balance, kept as the dashboard's "balance".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from services.usage import repo
from services.usage.rollup import Charge, Deltas, charge_of, fold_requests, log_row, utc
from shared import db
from shared.events import AnyEvent, UsageCharged, UsageRecorded, WalletCredited


@dataclass(frozen=True)
class Applied:
    new_events: int
    rows_inserted: int
    charges_applied: int
    charges_parked: int


def _month(ts: datetime) -> date:
    return date(ts.year, ts.month, 1)


async def apply_batch(pool: asyncpg.Pool, consumer: str, events: Sequence[AnyEvent]) -> Applied:
    """Claim the events and apply the new ones, all in one transaction (so a redelivery changes nothing)."""
    async with pool.acquire() as conn, conn.transaction():
        if any(isinstance(e, UsageRecorded | UsageCharged) for e in events):
            await conn.execute(repo.LOCK_LOG_WRITER)
        new_ids = await db.claim_events(conn, repo.SCHEMA, consumer, [e.event_id for e in events])
        recorded: dict[str, UsageRecorded] = {}
        charges: dict[str, Charge] = {}
        balances: dict[str, tuple[int, datetime]] = {}
        seen: set[str] = set()
        for e in events:
            if e.event_id not in new_ids or e.event_id in seen:
                continue
            seen.add(e.event_id)
            if isinstance(e, UsageRecorded):
                recorded.setdefault(e.request_id, e)
            elif isinstance(e, UsageCharged):
                charges.setdefault(e.request_id, charge_of(e.request_id, e.amount_micros, e.cost_micros,
                                                           e.occurred_at))
                _newest(balances, e.account_id, e.balance_micros, utc(e.occurred_at))
            elif isinstance(e, WalletCredited):
                _newest(balances, e.account_id, e.balance_micros, utc(e.occurred_at))
            # Any other type is not ours: claimed (so never retried) and otherwise ignored.

        parked_before = await repo.take_pending_charges(conn, list(recorded)) if recorded else {}
        rows = [log_row(e, charges.pop(rid, None) or parked_before.get(rid)) for rid, e in recorded.items()]
        await repo.ensure_partitions(conn, {_month(r.ts) for r in rows})
        inserted = await repo.insert_log_rows(conn, rows)
        deltas: Deltas = fold_requests(r for r in rows if r.request_id in inserted)

        waiting = list(charges.values())
        updated = await repo.apply_charges(conn, waiting)
        for r in updated:
            deltas.add_cost(r["account_id"], r["ts"], r["key_id"], r["model"], r["cost_micros"])
        unmatched = [c for c in waiting if c.request_id not in {r["request_id"] for r in updated}]
        # A charge for a row that exists and is already charged is a duplicate: drop it; else it is early.
        known = await repo.existing_requests(conn, [c.request_id for c in unmatched])
        early = [c for c in unmatched if c.request_id not in known]
        await repo.park_charges(conn, early)

        await repo.upsert_aggregates(conn, deltas)
        await repo.upsert_balances(conn, balances)
        charged_on_insert = sum(1 for r in rows if r.charged_at and r.request_id in inserted)
        return Applied(len(seen), len(inserted), len(updated) + charged_on_insert, len(early))


def _newest(balances: dict[str, tuple[int, datetime]], account_id: str, balance: int, at: datetime) -> None:
    current = balances.get(account_id)
    if current is None or at >= current[1]:
        balances[account_id] = (balance, at)
