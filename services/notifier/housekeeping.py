"""Housekeeping: the outbox backlog as metrics (every 15 s), so a dead SMTP server or receiver shows on a
dashboard; hourly pruning of finished outbox rows and old processed-event ids, so the tables stay small."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from prometheus_client import Gauge

from services.notifier import repo
from services.notifier.config import NotifierSettings
from services.notifier.notifications import CHANNELS

log = logging.getLogger("faregate.notifier.housekeeping")

PENDING = Gauge("faregate_notifier_outbox_pending", "Notifications waiting to be sent", ["channel"],
                multiprocess_mode="max")
OLDEST = Gauge("faregate_notifier_outbox_oldest_pending_seconds", "Age of the oldest waiting notification",
               ["channel"], multiprocess_mode="max")

MEASURE_EVERY_S = 15.0
PRUNE_EVERY_S = 3600.0


async def measure(pool: asyncpg.Pool) -> None:
    rows = {r["channel"]: r for r in await pool.fetch(repo.BACKLOG)}
    for channel in CHANNELS:
        row = rows.get(channel)
        PENDING.labels(channel).set(row["pending"] if row else 0)
        OLDEST.labels(channel).set(float(row["oldest_s"]) if row else 0.0)


async def prune(pool: asyncpg.Pool, retention_days: int) -> tuple[int, int]:
    """Returns (outbox rows, processed ids) deleted. Safe to run from every replica at once."""
    async with pool.acquire() as conn:
        outbox = await conn.execute(repo.PRUNE_OUTBOX, retention_days)
        processed = await conn.execute(repo.PRUNE_PROCESSED, max(retention_days, 8))
    return int(outbox.split()[-1]), int(processed.split()[-1])


async def run(pool: asyncpg.Pool, settings: NotifierSettings, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    next_prune = loop.time()
    while not stop.is_set():
        try:
            await measure(pool)
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_EVERY_S
                deleted = await prune(pool, settings.retention_days)
                if any(deleted):
                    log.info("pruned", extra={"outbox_rows": deleted[0], "processed_ids": deleted[1]})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("housekeeping failed; next round will retry", extra={"error": repr(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), MEASURE_EVERY_S)
