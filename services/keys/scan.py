"""The periodic scan: warn of keys about to expire (once per key and expiry), end rotated-out secrets whose
grace is over, and prune stale sessions and idempotency claims. Several replicas may run it: each row is
claimed by one UPDATE ... FOR UPDATE SKIP LOCKED before anything is published."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass

from services.keys import repo, snapshots
from services.keys.context import Ctx
from shared import events as ev

log = logging.getLogger("faregate.keys.scan")

PROCESSED_RETENTION_S = 8 * 24 * 3600  # a day beyond the streams' max age


@dataclass(frozen=True)
class ScanResult:
    expiring: int
    retired: int


def expiring_event_id(key_id: str, expires_at_iso: str) -> str:
    """The same key and expiry always make the same event id, so even a re-published warning is one event."""
    return hashlib.sha256(f"key.expiring:{key_id}:{expires_at_iso}".encode()).hexdigest()[:32]


async def scan_once(ctx: Ctx) -> ScanResult:
    async with ctx.pool.acquire() as conn:
        expiring = await conn.fetch(repo.CLAIM_EXPIRING, float(ctx.settings.expiry_lookahead_s))
        ended = await conn.fetch(repo.CLAIM_ENDED_GRACE)
        await conn.execute(repo.DELETE_STALE_SESSIONS, float(ctx.settings.session_idle_s),
                           float(ctx.settings.session_max_s))
        await conn.execute(repo.PRUNE_PROCESSED, float(PROCESSED_RETENTION_S))
        await conn.execute(repo.PRUNE_RESETS)
    for r in expiring:
        await ctx.publisher.publish(ev.KeyExpiring(
            event_id=expiring_event_id(r["id"], r["expires_at"].isoformat()), account_id=r["account_id"],
            key_id=r["id"], label=r["label"], expires_at=r["expires_at"],
        ))
    for r in ended:
        async with ctx.pool.acquire() as conn:
            row = await conn.fetchrow(repo.RETIRED_BY_HASH, r["key_hash"])
        await snapshots.publish_key(ctx, snapshots.retired_snapshot(row, r["key_hash"], r["grace_until"],
                                                                    retired=True))
    return ScanResult(expiring=len(expiring), retired=len(ended))


async def run_forever(ctx: Ctx, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await scan_once(ctx)
        except Exception:
            log.exception("key scan failed; next round will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=ctx.settings.expiry_scan_interval_s)


