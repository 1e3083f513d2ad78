"""`keys-last-used`: a key's last-used time, from usage.recorded, off the request path."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from nats.aio.msg import Msg

from services.keys import repo
from services.keys.context import Ctx
from shared import db
from shared import events as ev
from shared.bus import ConsumerSpec

# Writes are cheap and idempotent (greatest()), so large batches and a short ack wait are fine.
LAST_USED = ConsumerSpec(
    durable="keys-last-used",
    stream="USAGE",
    filter_subjects=("usage.recorded",),
    ack_wait_s=30.0,
    max_deliver=20,
    max_ack_pending=20_000,
    batch=512,
    backoff_s=(0.5, 1, 2, 5, 10, 30),
)


def latest_use(batch: Sequence[ev.AnyEvent]) -> dict[str, datetime]:
    """The newest occurrence per key among the usage events of a batch (other events are ignored)."""
    latest: dict[str, datetime] = {}
    for e in batch:
        if isinstance(e, ev.UsageRecorded) and e.key_id:
            if e.key_id not in latest or e.occurred_at > latest[e.key_id]:
                latest[e.key_id] = e.occurred_at
    return latest


async def apply_last_used(ctx: Ctx, batch: Sequence[ev.AnyEvent]) -> int:
    """Claim the batch's events and apply the new ones, in one transaction; returns how many were new."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        # The touch locks the key's row until this commit, and disabling that key (revocation) waits for the
        # lock: do not hold it through a disk flush for an informational timestamp. The commit stays atomic;
        # a database crash may forget the last fraction of a second of touches (never a charge).
        await conn.execute(repo.ASYNC_COMMIT)
        new = await db.claim_events(conn, "keys", LAST_USED.durable, [e.event_id for e in batch])
        latest = latest_use([e for e in batch if e.event_id in new])
        if latest:
            await conn.execute(repo.TOUCH_LAST_USED, list(latest), list(latest.values()))
    return len(new)


async def handle_last_used(ctx: Ctx, batch: Sequence[tuple[Msg, ev.AnyEvent]]) -> None:
    await apply_last_used(ctx, [e for _, e in batch])
