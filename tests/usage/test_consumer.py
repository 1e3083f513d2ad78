"""The usage-log consumer: one metadata row per request, cost from billing in either order, aggregates,
balances, and the mandatory consumer shapes (duplicate, redelivery after a lost ack, poison message)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from services.usage import consumer, ingest
from shared import bus
from shared.events import WalletCredited
from shared.runtime import Resources
from tests.usage.conftest import charged, eventually, recorded


async def _row(res: Resources, request_id: str) -> dict[str, object] | None:
    assert res.pool
    row = await res.pool.fetchrow("SELECT * FROM usage.request_log WHERE request_id = $1", request_id)
    return dict(row) if row else None


async def test_a_request_becomes_one_log_row_and_its_charge_fills_the_cost(
        usage_consumers: Resources) -> None:
    res = usage_consumers
    assert res.publisher and res.pool
    rec = recorded(prompt=1200, completion=300, cached=200, latency_ms=1234, ttft_ms=321)
    await res.publisher.publish(rec)

    async def logged() -> bool:
        return await _row(res, rec.request_id) is not None

    await eventually(logged)
    row = await _row(res, rec.request_id)
    assert row is not None
    who = (row["account_id"], row["key_id"], row["model"], row["channel_id"], row["dialect"], row["status"])
    assert who == ("acct-a", "key-a1", "gpt-4o-mini", "ch-1", "openai", 200)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (1200, 300, 200)
    assert (row["latency_ms"], row["ttft_ms"], row["cost_micros"], row["charged_at"]) == (1234, 321, 0, None)

    await res.publisher.publish(charged(rec, amount=2_345, balance=7_000_000))

    async def costed() -> bool:
        r = await _row(res, rec.request_id)
        return r is not None and r["cost_micros"] == 2_345

    await eventually(costed)
    hourly = await res.pool.fetchrow("SELECT * FROM usage.usage_hourly WHERE account_id = 'acct-a'")
    daily = await res.pool.fetchrow("SELECT * FROM usage.usage_daily WHERE account_id = 'acct-a'")
    for agg in (hourly, daily):
        assert agg is not None
        assert (agg["requests"], agg["prompt_tokens"], agg["completion_tokens"], agg["cost_micros"]) == (
            1, 1200, 300, 2_345)
    balance = await res.pool.fetchval(
        "SELECT balance_micros FROM usage.account_balance WHERE account_id = 'acct-a'")
    assert balance == 7_000_000


async def test_a_charge_that_arrives_first_waits_for_its_row(clean_usage: Resources) -> None:
    res = clean_usage
    assert res.pool
    rec = recorded()
    applied = await ingest.apply_batch(res.pool, "usage-log", [charged(rec, amount=999, balance=1)])
    assert applied.charges_parked == 1
    assert await _row(res, rec.request_id) is None
    await ingest.apply_batch(res.pool, "usage-log", [rec])
    row = await _row(res, rec.request_id)
    assert row is not None and row["cost_micros"] == 999 and row["charged_at"] is not None
    assert await res.pool.fetchval("SELECT count(*) FROM usage.pending_charges") == 0
    assert await res.pool.fetchval("SELECT cost_micros FROM usage.usage_daily") == 999


async def test_both_events_in_one_batch_in_either_order(clean_usage: Resources) -> None:
    res = clean_usage
    assert res.pool
    a, b = recorded(), recorded()
    await ingest.apply_batch(res.pool, "usage-log", [charged(a, 10, 5), a, b, charged(b, 20, 4)])
    assert [(await _row(res, r.request_id) or {}).get("cost_micros") for r in (a, b)] == [10, 20]
    assert await res.pool.fetchval("SELECT sum(cost_micros) FROM usage.usage_hourly") == 30


async def test_the_same_events_twice_have_one_effect(clean_usage: Resources) -> None:
    """As if the ack of a committed batch were lost: the redelivered batch changes nothing."""
    res = clean_usage
    assert res.pool
    rec = recorded(prompt=10, completion=5)
    batch = [rec, charged(rec, 77, 1_000)]
    first = await ingest.apply_batch(res.pool, "usage-log", batch)
    again = await ingest.apply_batch(res.pool, "usage-log", batch)
    assert (first.new_events, again.new_events) == (2, 0)
    assert await res.pool.fetchval("SELECT count(*) FROM usage.request_log") == 1
    agg = await res.pool.fetchrow("SELECT requests, prompt_tokens, cost_micros FROM usage.usage_daily")
    assert agg is not None and tuple(agg) == (1, 10, 77)


async def test_a_second_charge_for_a_charged_request_adds_nothing(clean_usage: Resources) -> None:
    res = clean_usage
    assert res.pool
    rec = recorded()
    await ingest.apply_batch(res.pool, "usage-log", [rec, charged(rec, 50, 1)])
    await ingest.apply_batch(res.pool, "usage-log", [charged(rec, 50, 1)])  # a new event id, same request
    assert await res.pool.fetchval("SELECT cost_micros FROM usage.usage_hourly") == 50
    assert await res.pool.fetchval("SELECT count(*) FROM usage.pending_charges") == 0


async def test_failed_requests_count_as_errors_and_months_get_their_own_partition(
        clean_usage: Resources) -> None:
    res = clean_usage
    assert res.pool
    last_month = datetime.now(UTC).replace(day=1) - timedelta(days=3)
    await ingest.apply_batch(res.pool, "usage-log", [
        recorded(status=429, error_code="rate_limited", prompt=0, completion=0, at=last_month),
        recorded(),
    ])
    assert await res.pool.fetchval("SELECT sum(errors) FROM usage.usage_daily") == 1
    parts = await res.pool.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage.request_log'::regclass")
    assert parts >= 2
    code = await res.pool.fetchval("SELECT error_code FROM usage.request_log WHERE status = 429")
    assert code == "rate_limited"


async def test_balance_follows_the_newest_billing_event(usage_consumers: Resources) -> None:
    res = usage_consumers
    assert res.publisher and res.pool
    now = datetime.now(UTC)
    topup = WalletCredited(account_id="acct-b", kind="topup", amount_micros=5, balance_micros=5_000_000,
                           occurred_at=now)
    # An older charge delivered late must not overwrite the newer top-up's balance.
    late = charged(recorded("acct-b"), 1, 4_000_000, at=now - timedelta(minutes=1))
    await res.publisher.publish(topup)
    await res.publisher.publish(late)

    async def seen() -> bool:
        assert res.pool
        n = await res.pool.fetchval("SELECT count(*) FROM usage.processed_events WHERE event_id = ANY($1)",
                                    [topup.event_id, late.event_id])
        return bool(n == 2)

    await eventually(seen)
    assert await res.pool.fetchval(
        "SELECT balance_micros FROM usage.account_balance WHERE account_id = 'acct-b'") == 5_000_000


async def test_a_poison_message_is_terminated_and_the_rest_still_land(usage_consumers: Resources) -> None:
    res = usage_consumers
    assert res.js and res.publisher and res.pool
    ns = res.common.namespace
    await res.js.publish(f"{ns}.usage.recorded", b'{"type": "usage.recorded", "event_id": 42}')
    good = recorded()
    await res.publisher.publish(good)

    async def landed() -> bool:
        return await _row(res, good.request_id) is not None

    await eventually(landed)

    async def drained() -> bool:
        assert res.js
        info = await res.js.consumer_info(bus.stream_name(ns, bus.STREAMS[0]), consumer.LOG_CONSUMER.durable)
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await eventually(drained)  # nothing left to redeliver: the poison message was terminated, not retried
    assert await _row(res, good.request_id) is not None


async def test_two_consumers_racing_on_one_request_still_charge_it(clean_usage: Resources) -> None:
    """Replicas share the durable consumer, so a request's usage.recorded and its usage.charged can be applied
    at the same moment by two processes. Whichever commits first, the row ends up charged exactly once."""
    res = clean_usage
    assert res.pool
    pairs = [recorded() for _ in range(40)]
    for rec in pairs:
        await asyncio.gather(ingest.apply_batch(res.pool, "usage-log", [rec]),
                             ingest.apply_batch(res.pool, "usage-log", [charged(rec, 13, 0)]))
    uncharged = await res.pool.fetchval("SELECT count(*) FROM usage.request_log WHERE charged_at IS NULL")
    assert (uncharged, await res.pool.fetchval("SELECT count(*) FROM usage.pending_charges")) == (0, 0)
    assert await res.pool.fetchval("SELECT sum(cost_micros) FROM usage.usage_daily") == 13 * 40
