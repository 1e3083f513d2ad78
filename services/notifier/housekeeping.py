"""Hourly pruning of finished outbox rows and old processed-event ids, so the tables stay small."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from services.notifier import repo
from services.notifier.config import NotifierSettings

log = logging.getLogger("faregate.notifier.housekeeping")

EVERY_S = 3600.0


async def prune(pool: asyncpg.Pool, retention_days: int) -> tuple[int, int]:
    """Returns (outbox rows, processed ids) deleted. Safe to run from every replica at once."""
    async with pool.acquire() as conn:
        outbox = await conn.execute(repo.PRUNE_OUTBOX, retention_days)
        processed = await conn.execute(repo.PRUNE_PROCESSED, max(retention_days, 8))
    return int(outbox.split()[-1]), int(processed.split()[-1])


async def run(pool: asyncpg.Pool, settings: NotifierSettings, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            deleted = await prune(pool, settings.retention_days)
            if any(deleted):
                log.info("pruned", extra={"outbox_rows": deleted[0], "processed_ids": deleted[1]})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("pruning failed; next round will retry", extra={"error": repr(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EVERY_S)
