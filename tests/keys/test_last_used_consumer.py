"""`keys-last-used`, the keys service's one consumer: the mandatory shapes (a duplicate has one effect, a
redelivery after a commit changes nothing, a poison message is terminated and does not block the rest)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.keys import consumer
from services.keys.context import Ctx
from shared import bus
from shared import events as ev
from shared.runtime import Resources
from tests.keys.conftest import register


def used(key_id: str, account_id: str, at: datetime) -> ev.UsageRecorded:
    rid = ev.new_id()
    return ev.UsageRecorded(event_id=rid, request_id=rid, account_id=account_id, key_id=key_id,
                            model="gpt-4o", occurred_at=at)


async def last_used(ctx: Ctx, key_id: str) -> datetime | None:
    async with ctx.pool.acquire() as conn:
        value: datetime | None = await conn.fetchval("SELECT last_used_at FROM keys.api_keys WHERE id = $1",
                                                     key_id)
        return value


async def test_a_batch_applied_twice_has_one_effect(client: AsyncTestClient[Litestar], ctx: Ctx) -> None:
    alice = await register(client)
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    batch = [used(alice.key_id, alice.account_id, t - timedelta(seconds=30)),
             used(alice.key_id, alice.account_id, t)]
    assert await consumer.apply_last_used(ctx, batch) == 2
    assert await last_used(ctx, alice.key_id) == t
    # Redelivered after the commit (the ack was lost): claimed already, nothing applied.
    assert await consumer.apply_last_used(ctx, batch) == 0
    assert await last_used(ctx, alice.key_id) == t


def test_latest_use_keeps_the_newest_per_key_and_ignores_other_events() -> None:
    t = datetime(2030, 1, 1, tzinfo=UTC)
    batch: list[ev.AnyEvent] = [used("k1", "a", t), used("k1", "a", t + timedelta(seconds=5)),
                                used("k2", "a", t), ev.CatalogChanged(version=3),
                                used("", "a", t + timedelta(days=1))]
    assert consumer.latest_use(batch) == {"k1": t + timedelta(seconds=5), "k2": t}


async def test_a_poison_message_is_terminated_and_the_next_event_still_applies(
        client: AsyncTestClient[Litestar], ctx: Ctx, resources: Resources) -> None:
    alice = await register(client)  # the app, and with it the consumer, is running
    js = resources.js
    assert js is not None
    subject = bus.subject(ctx.common.namespace, "usage.recorded")
    await js.publish(subject, b'{"type": "usage.recorded", "broken', headers={"Nats-Msg-Id": ev.new_id()})
    t = datetime.now(UTC).replace(microsecond=0)
    good = used(alice.key_id, alice.account_id, t)
    await ctx.publisher.publish(good)
    deadline = asyncio.get_running_loop().time() + 10
    while await last_used(ctx, alice.key_id) != t:
        assert asyncio.get_running_loop().time() < deadline, "the consumer is stuck behind the poison message"
        await asyncio.sleep(0.1)
    sname = bus.stream_name(ctx.common.namespace, next(s for s in bus.STREAMS if s.name == "USAGE"))
    info = await js.consumer_info(sname, consumer.LAST_USED.durable)
    deadline = asyncio.get_running_loop().time() + 10
    while info.num_ack_pending or info.num_pending:  # nothing left hanging for redelivery
        assert asyncio.get_running_loop().time() < deadline, info
        await asyncio.sleep(0.1)
        info = await js.consumer_info(sname, consumer.LAST_USED.durable)
