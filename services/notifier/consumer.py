"""The event consumers: each event becomes outbox rows in one transaction with its processed-events claim.

Sending happens elsewhere (sender.py), so an SMTP server or webhook receiver that is down never slows
consuming.
One durable consumer per stream (a JetStream consumer reads one stream), all sharing this handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import asyncpg
import msgspec
from nats.aio.msg import Msg
from prometheus_client import Counter

from services.notifier import repo
from services.notifier.notifications import Context, Planned, Prefs, account_of, plan
from services.notifier.preferences import prefs_from_row
from shared import bus, crypto, db
from shared import events as ev

log = logging.getLogger("faregate.notifier.consumer")

QUEUED = Counter("faregate_notifier_queued_total", "Notifications written to the outbox", ["channel", "kind"])
PLAN_ERRORS = Counter("faregate_notifier_plan_errors_total", "Events whose notifications were not planned")

def _spec(durable: str, stream: str, subjects: tuple[str, ...]) -> bus.ConsumerSpec:
    # Ack settings. max_deliver=-1: a batch that fails (Postgres away) is retried until it succeeds, never
    # dropped; the backoff spaces the retries out. ack_wait covers one batch's transaction with a wide margin.
    return bus.ConsumerSpec(durable=durable, stream=stream, filter_subjects=subjects, ack_wait_s=10.0,
                            max_deliver=-1, max_ack_pending=1000, batch=100,
                            backoff_s=(1.0, 2.0, 5.0, 10.0, 30.0, 60.0))


ACCOUNTS = _spec("notifier-accounts", "ACCOUNTS",
                 ("account.registered", "password.reset_requested", "key.expiring", "org.member_invited"))
BILLING = _spec("notifier-billing", "BILLING", ("wallet.credited", "plan.purchased", "balance.low"))
OPS = _spec("notifier-ops", "OPS", ("channel.state_changed",))
SPECS = (ACCOUNTS, BILLING, OPS)

_json = msgspec.json.Encoder()


async def _prefs(conn: asyncpg.Connection, account_id: str | None) -> Prefs | None:
    if account_id is None:
        return None
    row = await conn.fetchrow(repo.GET_PREFS, account_id)
    return prefs_from_row(row) if row else None


async def insert(conn: asyncpg.Connection, item: Planned, secret_key: str) -> bool:
    """Write one notification; False when it was already there (same dedupe key, channel and recipient)."""
    sealed = crypto.seal(_json.encode(item.secret).decode(), secret_key) if item.secret else None
    payload = _json.encode({"vars": item.vars, "data": item.data}).decode()
    row_id = await conn.fetchval(repo.INSERT_OUTBOX, item.dedupe_key, item.channel, item.recipient,
                                 item.account_id, item.kind, item.event_type, payload, sealed)
    if row_id is not None:
        QUEUED.labels(item.channel, item.kind).inc()
    return row_id is not None


async def apply(conn: asyncpg.Connection, event: ev.AnyEvent, ctx: Context, secret_key: str) -> int:
    """The effects of one new event, inside the caller's transaction; returns how many rows were queued."""
    if isinstance(event, ev.AccountRegistered | ev.PasswordResetRequested):
        await conn.execute(repo.UPSERT_RECIPIENT, event.account_id, event.email, event.occurred_at)
    try:
        planned = plan(event, await _prefs(conn, account_of(event)), ctx)
    except Exception:
        # A bug in the rules for one event must not stall every other notification behind it.
        log.exception("could not plan notifications", extra={"event_id": event.event_id,
                                                             "event_type": ev.tag_of(type(event))})
        PLAN_ERRORS.inc()
        return 0
    created = 0
    for item in planned:
        created += await insert(conn, item, secret_key)
    return created


def make_handler(
    pool: asyncpg.Pool, ctx: Context, secret_key: str, consumer: str, wake: Callable[[], None],
) -> bus.Handler:
    async def handle(batch: Sequence[tuple[Msg, ev.AnyEvent]]) -> None:
        created = 0
        async with pool.acquire() as conn, conn.transaction():
            new = await db.claim_events(conn, repo.SCHEMA, consumer, [e.event_id for _, e in batch])
            for _, event in batch:
                if event.event_id in new:
                    new.discard(event.event_id)  # the same event twice in one batch: once
                    created += await apply(conn, event, ctx, secret_key)
        if created:
            wake()

    return handle
