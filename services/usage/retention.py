"""Retention: request-log partitions older than the configured age are dropped whole (no row-by-row delete);
the hourly and daily aggregates stay. Also trims the consumer bookkeeping that can no longer matter."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
from prometheus_client import Counter

from services.usage import repo

log = logging.getLogger("faregate.usage.retention")

DROPPED = Counter("faregate_usage_partitions_dropped_total",
                  "Request-log month partitions dropped by retention")

# NATS keeps events 7 days (shared/bus.py STREAMS max_age); an id older than this can never be redelivered.
PROCESSED_KEEP = timedelta(days=30)
# A charge whose request row has not arrived in a week never will (its usage.recorded aged out of the stream).
PENDING_CHARGE_KEEP = timedelta(days=7)


@dataclass(frozen=True)
class Retained:
    dropped_partitions: list[str]
    processed_pruned: int
    charges_pruned: int


async def apply(pool: asyncpg.Pool, retention_days: int, now: datetime | None = None) -> Retained:
    now = now or datetime.now(UTC)
    async with pool.acquire() as conn:
        cutoff = now - timedelta(days=retention_days)
        dropped = [r[0] for r in await conn.fetch(repo.DROP_PARTITIONS_BEFORE, cutoff)]
        # Next month's partition exists before its first request, so no batch pays for the DDL. Under the
        # writers' lock: two sessions creating one partition at once would collide.
        nxt = (now.replace(day=1) + timedelta(days=32)).date()
        async with conn.transaction():
            await conn.execute(repo.LOCK_LOG_WRITER)
            await repo.ensure_partitions(conn, {date(now.year, now.month, 1), date(nxt.year, nxt.month, 1)})
        processed = await conn.execute(repo.PRUNE_PROCESSED, now - PROCESSED_KEEP)
        charges = await conn.execute(repo.PRUNE_PENDING_CHARGES, now - PENDING_CHARGE_KEEP)
    DROPPED.inc(len(dropped))
    if dropped:
        log.info("request-log partitions dropped", extra={"partitions": ",".join(dropped)})
    return Retained(dropped, int(processed.split()[-1]), int(charges.split()[-1]))


async def run_forever(pool: asyncpg.Pool, retention_days: int, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await apply(pool, retention_days)
        except Exception:
            log.exception("retention run failed; will try again")
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
