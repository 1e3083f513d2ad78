"""An account's view of its notifications: history with attempts and errors, retrying a failed webhook, and a
test delivery on demand."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from services.notifier import repo
from services.notifier.consumer import insert
from services.notifier.notifications import CHANNELS, Planned, account_recipient
from shared.events import new_id
from shared.web import NotFound, ServiceError

STATUSES = ("pending", "sent", "failed", "cancelled")


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    channel: str
    kind: str
    event_type: str
    status: str  # pending | sent | failed | cancelled
    attempts: int
    last_error: str | None
    destination: str | None
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None


async def list_for(pool: asyncpg.Pool, account_id: str, *, status: str | None, channel: str | None,
                   limit: int) -> list[Delivery]:
    if status is not None and status not in STATUSES:
        raise ServiceError("status must be pending, sent, failed or cancelled", code="invalid_status",
                           field="status")
    if channel is not None and channel not in CHANNELS:
        raise ServiceError("channel must be email or webhook", code="invalid_channel", field="channel")
    rows = await pool.fetch(repo.LIST_DELIVERIES, account_id, status, channel, max(1, min(limit, 500)))
    return [Delivery(**dict(r)) for r in rows]


async def retry(pool: asyncpg.Pool, account_id: str, delivery_id: int) -> None:
    if await pool.fetchval(repo.RETRY_FAILED, delivery_id, account_id) is None:
        raise NotFound("no failed webhook delivery with that id")


async def queue_test(pool: asyncpg.Pool, account_id: str, secret_key: str) -> Delivery:
    """A signed `webhook_test` delivery to the account's webhook, to check the receiving end."""
    async with pool.acquire() as conn:
        prefs = await conn.fetchrow(repo.GET_PREFS, account_id)
        if prefs is None or not prefs["webhook_url"]:
            raise ServiceError("set a webhook_url first", code="no_webhook", status=409)
        item = Planned(f"webhook.test:{new_id()}", "webhook", account_recipient(account_id), account_id,
                       "webhook_test", "webhook.test", {},
                       {"account_id": account_id, "message": "a test delivery from Faregate"})
        await insert(conn, item, secret_key)
        row = await conn.fetchrow(repo.GET_DELIVERY, item.dedupe_key)
    return Delivery(**dict(row))
