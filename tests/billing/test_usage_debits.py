"""Usage events become exact, once-only debits: priced from the event's own prices, applied in batches,
released in the Redis spend guard, announced as usage.charged and, on a downward crossing, balance.low."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from services.billing import consumer
from services.billing.funding import Funding
from services.billing.guard import BillingGuard
from shared import bus, events
from shared.events import ModelPrice, new_id
from shared.runtime import Resources
from shared.wallet import SpendGuard
from tests.billing.conftest import (
    COST,
    PRICE,
    balance,
    charged_count,
    credit,
    running_consumer,
    usage,
    wait_for,
)


async def _ledger(resources: Resources, account: str) -> list[dict[str, object]]:
    assert resources.pool
    rows = await resources.pool.fetch(
        "SELECT seq, kind, amount_micros, balance_after, price_micros, cost_micros, plan_micros, request_id, "
        "model, channel_id FROM billing.ledger WHERE account_id = $1 ORDER BY seq", account)
    return [dict(r) for r in rows]


async def test_each_token_kind_and_the_group_multiplier_are_charged_exactly(resources: Resources,
                                                                           funding: Funding,
                                                                           guard: BillingGuard) -> None:
    assert resources.pool
    account = new_id()
    await credit(funding, account, 10_000_000)
    price = ModelPrice(input=3_000_000, output=15_000_000, cached_input=300_000)  # $3 / $15 / $0.30 per M
    cases = [
        # (prompt, cached, completion, group ppm, discount ppm) -> expected micro-USD
        ((1_000, 0, 0, 1_000_000, 0), 3_000),          # input only: 1000 x $3/M
        ((0, 0, 1_000, 1_000_000, 0), 15_000),         # output only
        ((1_000, 1_000, 0, 1_000_000, 0), 300),        # fully cached input at the cached price
        ((1_000, 400, 200, 1_000_000, 0), 1_800 + 120 + 3_000),
        ((1_000, 400, 200, 1_500_000, 0), 7_380),      # group x1.5
        ((1_000, 400, 200, 1_500_000, 100_000), 6_642),  # and 10% platform discount
        ((1, 0, 0, 1_000_000, 0), 3),                  # 3 micros exactly
        ((0, 0, 1, 1_000_000, 0), 15),
        ((0, 0, 1, 1_100_000, 0), 17),                 # 16.5 rounds half up, once
    ]
    evs = [usage(account, price=price, prompt_tokens=p, cached_tokens=c, completion_tokens=o,
                 group_ratio_ppm=g, discount_ppm=d) for (p, c, o, g, d), _ in cases]
    result = await consumer.apply_batch(resources.pool, evs, default_threshold=0)
    assert result.new == len(cases)
    rows = await _ledger(resources, account)
    usage_rows = [r for r in rows if r["kind"] == "usage"]
    assert [r["price_micros"] for r in usage_rows] == [want for _, want in cases]
    assert [-r["amount_micros"] for r in usage_rows] == [want for _, want in cases]
    # The operator's cost is kept apart: list price x channel discount, no group multiplier, no discount.
    assert usage_rows[0]["cost_micros"] == 120  # 1000 x $0.12/M (COST)
    assert await balance(resources, account) == 10_000_000 - sum(want for _, want in cases)
    # The balance_after chain is the running balance.
    running = 0
    for r in rows:
        running += r["amount_micros"]
        assert r["balance_after"] == running


async def test_the_same_event_twice_debits_once(resources: Resources, funding: Funding,
                                                guard: BillingGuard) -> None:
    assert resources.pool
    account = new_id()
    await credit(funding, account, 1_000_000)
    e = usage(account)
    first = await consumer.apply_batch(resources.pool, [e, e], default_threshold=0)  # twice in one batch
    again = await consumer.apply_batch(resources.pool, [e], default_threshold=0)  # and in a later one
    assert (first.new, first.duplicates, again.new, again.duplicates) == (1, 1, 0, 1)
    assert await charged_count(resources, account) == 1
    assert await balance(resources, account) == 1_000_000 - 450


async def test_through_jetstream_redelivery_after_commit_does_not_double_charge(
        resources: Resources, funding: Funding, guard: BillingGuard, spend_guard: SpendGuard) -> None:
    """The gateway reserves and settles; billing commits the debit but dies before acking; JetStream
    redelivers; the restarted consumer changes nothing in Postgres, releases Redis's pending once and the
    wallet ends exact."""
    assert resources.js and resources.pool and resources.publisher
    ns = resources.common.namespace
    account = new_id()
    await credit(funding, account, 1_000_000)
    e = usage(account, reservation_id=new_id())
    assert (await spend_guard.reserve(e.reservation_id, account, e.key_id, 5_000)).ok
    await spend_guard.settle(e.reservation_id, account, e.key_id, 450)
    await resources.publisher.publish(e)

    spec = consumer.consumer_spec(50)
    await bus.ensure_consumer(resources.js, ns, spec)
    sub = await resources.js.pull_subscribe_bind(spec.durable, bus.stream_name(ns, bus.STREAMS[0]))
    handler = consumer.UsageConsumer(resources.pool, guard, resources.publisher, 0)
    mine = []
    for _ in range(20):
        msgs = await sub.fetch(100, timeout=2)
        for m in msgs:
            decoded = events.decode(m.data)
            if decoded.event_id == e.event_id:
                mine.append(m)
            else:
                await m.nak()  # another test's event: leave it for its own consumer
        if mine:
            break
    assert mine, "the usage event was not delivered"
    await handler([(mine[0], events.decode(mine[0].data))])  # committed...
    await mine[0].nak()  # ...and the process "died" before the ack: redelivered at once
    await sub.unsubscribe()
    assert await balance(resources, account) == 1_000_000 - 450

    async with running_consumer(resources, guard):
        async def redelivered() -> bool:
            assert resources.js
            info = await resources.js.consumer_info(bus.stream_name(ns, bus.STREAMS[0]), spec.durable)
            return info.num_ack_pending == 0 and info.num_pending == 0
        await wait_for(redelivered)
    assert await charged_count(resources, account) == 1
    assert await balance(resources, account) == 1_000_000 - 450
    assert await spend_guard.snapshot(account) == {"balance": 1_000_000 - 450, "reserved": 0, "pending": 0,
                                                   "ver": (await spend_guard.snapshot(account))["ver"]}


async def test_a_poison_message_is_terminated_and_the_stream_moves_on(resources: Resources, funding: Funding,
                                                                      guard: BillingGuard) -> None:
    assert resources.js and resources.pool and resources.publisher
    ns = resources.common.namespace
    account = new_id()
    await credit(funding, account, 1_000_000)
    poison = await resources.js.publish(f"{ns}.usage.recorded", b'{"type": "usage.recorded", "event_id": ')
    bad = usage(account, prompt_tokens=-5)  # well-formed, but not chargeable
    good = usage(account)
    await resources.publisher.publish(bad)
    await resources.publisher.publish(good)
    try:
        async with running_consumer(resources, guard):
            async def debited() -> bool:
                return await charged_count(resources, account) == 1
            await wait_for(debited)
            info = await resources.js.consumer_info(bus.stream_name(ns, bus.STREAMS[0]), consumer.NAME)
            assert info.num_ack_pending == 0
    finally:
        # Other tests in the session read this stream back and expect well-formed events.
        await resources.js.delete_msg(bus.stream_name(ns, bus.STREAMS[0]), poison.seq)
    assert await balance(resources, account) == 1_000_000 - 450
    reason = await resources.pool.fetchval("SELECT reason FROM billing.rejected_events WHERE event_id = $1",
                                           bad.event_id)
    assert reason == "negative token count"


async def test_charges_are_announced_and_a_low_balance_is_announced_once_per_crossing(
        resources: Resources, funding: Funding, guard: BillingGuard) -> None:
    assert resources.js and resources.pool
    ns = resources.common.namespace
    account = new_id()
    await credit(funding, account, 2_000)  # the default threshold in these tests is 1_000 micros below
    seen: list[events.AnyEvent] = []
    assert resources.nc

    async def collect(msg: Msg) -> None:
        e = events.decode(msg.data)
        if getattr(e, "account_id", None) == account:
            seen.append(e)

    sub = await resources.nc.subscribe(f"{ns}.>", cb=collect)  # every published event passes here

    pub = resources.publisher
    assert pub
    small = ModelPrice(input=0, output=1_000_000)  # 1 micro per output token
    for tokens in (600, 600, 600, 600):  # 2000 -> 1400 -> 800 (low) -> 200 -> -400 (exhausted)
        result = await consumer.apply_batch(resources.pool, [usage(account, price=small,
                                                                   completion_tokens=tokens,
                                                                   prompt_tokens=0)], default_threshold=1_000)
        await consumer.after_commit(result, guard, pub)
    await asyncio.sleep(0.3)
    await sub.unsubscribe()
    charged = [e for e in seen if isinstance(e, events.UsageCharged)]
    lows = [e for e in seen if isinstance(e, events.BalanceLow)]
    assert [c.amount_micros for c in charged] == [600] * 4
    assert [c.balance_micros for c in charged] == [1_400, 800, 200, -400]
    assert [(b.balance_micros, b.exhausted) for b in lows] == [(800, False), (-400, True)]


async def test_margin_is_queryable_per_request_model_and_channel(resources: Resources,
                                                                 funding: Funding) -> None:
    assert resources.pool
    account = new_id()
    await credit(funding, account, 1_000_000)
    evs = [usage(account, model="m-a", channel_id="ch-x"), usage(account, model="m-a", channel_id="ch-y"),
           usage(account, model="m-b", channel_id="ch-x", group_ratio_ppm=2_000_000)]
    await consumer.apply_batch(resources.pool, evs, default_threshold=0)
    rows = await resources.pool.fetch(
        "SELECT model, sum(price_micros) - sum(cost_micros) AS margin FROM billing.ledger "
        "WHERE account_id = $1 AND kind = 'usage' GROUP BY model ORDER BY model", account)
    # sell 450 vs cost 360 per request (COST is 80% of PRICE); the x2 group doubles only the sell side.
    assert [(r["model"], r["margin"]) for r in rows] == [("m-a", 2 * (450 - 360)), ("m-b", 900 - 360)]
    assert COST.input * 5 == PRICE.input * 4


async def test_a_failed_request_is_recorded_but_costs_nothing(resources: Resources, funding: Funding,
                                                              guard: BillingGuard) -> None:
    assert resources.pool and resources.publisher
    account = new_id()
    await credit(funding, account, 1_000_000)
    failed = usage(account, status=502, error_code="upstream_error", prompt_tokens=0, completion_tokens=0)
    result = await consumer.apply_batch(resources.pool, [failed], default_threshold=0)
    await consumer.after_commit(result, guard, resources.publisher)
    assert result.new == 1
    assert await charged_count(resources, account) == 0  # no ledger row...
    claimed = await resources.pool.fetchval(
        "SELECT count(*) FROM billing.processed_events WHERE consumer = $1 AND event_id = $2",
        consumer.NAME, failed.event_id)
    assert claimed == 1  # ...but the event is claimed, so a redelivery is recognised
    charged = [e for e in result.outgoing if isinstance(e, events.UsageCharged)]
    assert [(c.amount_micros, c.balance_micros) for c in charged] == [(0, 1_000_000)]


async def test_key_totals_survive_a_redis_flush(resources: Resources, funding: Funding,
                                                guard: BillingGuard) -> None:
    from services.billing import hydrate

    assert resources.pool and resources.redis
    account = new_id()
    await credit(funding, account, 1_000_000)
    evs = [usage(account, key_id=f"cap-{account}") for _ in range(3)]
    await consumer.after_commit(await consumer.apply_batch(resources.pool, evs, default_threshold=0), guard,
                                resources.publisher)  # type: ignore[arg-type]
    assert int(await resources.redis.hget(resources.keys.quota(f"cap-{account}"), "used")) == 1_350
    await resources.redis.delete(resources.keys.quota(f"cap-{account}"), resources.keys.wallet(account))
    await hydrate.hydrate_all(resources.pool, guard)
    assert int(await resources.redis.hget(resources.keys.quota(f"cap-{account}"), "used")) == 1_350
    assert int(await resources.redis.hget(resources.keys.wallet(account), "balance")) == 1_000_000 - 1_350


async def test_a_top_up_rearms_the_low_balance_alert(resources: Resources, funding: Funding,
                                                     guard: BillingGuard) -> None:
    """Below the threshold once: one alert. Topped up above it and spent down again: a second alert."""
    assert resources.pool
    account = new_id()
    await funding.set_threshold(account, 1_000)
    await credit(funding, account, 1_500)
    small = ModelPrice(input=0, output=1_000_000)

    async def spend(tokens: int) -> list[events.BalanceLow]:
        result = await consumer.apply_batch(resources.pool, [usage(  # type: ignore[arg-type]
            account, price=small, prompt_tokens=0, completion_tokens=tokens)], default_threshold=1_000)
        return [e for e in result.outgoing if isinstance(e, events.BalanceLow)]

    assert [e.balance_micros for e in await spend(600)] == [900]  # crossed
    assert await spend(100) == []  # still below: no second alert
    await credit(funding, account, 5_000)  # back above the threshold
    assert [e.balance_micros for e in await spend(5_000)] == [800]  # a new crossing


async def test_tokens_without_a_price_are_rejected_not_given_away(resources: Resources,
                                                                   funding: Funding) -> None:
    assert resources.pool
    account = new_id()
    await credit(funding, account, 1_000_000)
    unpriced = usage(account, price=None)
    result = await consumer.apply_batch(resources.pool, [unpriced], default_threshold=0)
    assert (result.new, result.rejected) == (0, 1)
    reason = await resources.pool.fetchval("SELECT reason FROM billing.rejected_events WHERE event_id = $1",
                                           unpriced.event_id)
    assert reason == "tokens used but no price on the event"
