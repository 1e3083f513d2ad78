"""Billing test fixtures: the real pool, Redis and NATS from `resources`, billing's own objects built on them,
and a running `billing-usage` consumer when a test wants the whole path through JetStream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.billing import consumer, wallets
from services.billing.config import BillingSettings
from services.billing.funding import Funding
from services.billing.guard import BillingGuard
from services.billing.payments import SandboxProvider
from shared import bus
from shared.events import ModelPrice, UsageRecorded, new_id
from shared.runtime import Resources
from shared.wallet import SpendGuard

# gpt-4o-mini list prices: $0.15 / $0.60 per million tokens, cached input $0.075.
PRICE = ModelPrice(input=150_000, output=600_000, cached_input=75_000)
COST = ModelPrice(input=120_000, output=480_000, cached_input=60_000)


def usage(account_id: str, **kw: Any) -> UsageRecorded:
    rid = kw.pop("request_id", None) or new_id()
    fields: dict[str, Any] = {"event_id": rid, "request_id": rid, "account_id": account_id,
                              "key_id": "k-" + account_id, "model": "gpt-4o-mini", "channel_id": "ch-1",
                              "price": PRICE, "cost_price": COST, "prompt_tokens": 1000,
                              "completion_tokens": 500}
    fields.update(kw)
    return UsageRecorded(**fields)


@pytest.fixture
def settings() -> BillingSettings:
    return BillingSettings(stripe_webhook_secret="whsec_test_secret")


@pytest.fixture
def guard(resources: Resources) -> BillingGuard:
    assert resources.redis
    return BillingGuard(resources.redis, resources.keys)


@pytest.fixture
def spend_guard(resources: Resources) -> SpendGuard:
    assert resources.redis
    return SpendGuard(resources.redis, resources.keys)


@pytest.fixture
def funding(resources: Resources, guard: BillingGuard, settings: BillingSettings) -> Funding:
    assert resources.pool
    return Funding(resources.pool, guard, resources.publisher, settings,
                   SandboxProvider("http://billing.test"))


async def credit(funding: Funding, account_id: str, amount: int) -> None:
    await funding.post(account_id, wallets.Entry(kind="adjustment", amount=amount, event_id=new_id(),
                                                 reason="test credit"))


async def balance(resources: Resources, account_id: str) -> int:
    assert resources.pool
    return int(await resources.pool.fetchval(
        "SELECT balance_micros FROM billing.wallets WHERE account_id = $1", account_id) or 0)


@contextlib.asynccontextmanager
async def running_consumer(resources: Resources, guard: BillingGuard,
                           batch: int = 200) -> AsyncIterator[consumer.UsageConsumer]:
    assert resources.js and resources.pool and resources.publisher
    handler = consumer.UsageConsumer(resources.pool, guard, resources.publisher, 1_000_000)
    stop = asyncio.Event()
    task = asyncio.create_task(bus.run_consumer(resources.js, resources.common.namespace,
                                                consumer.consumer_spec(batch), handler, stop))
    try:
        yield handler
    finally:
        stop.set()
        await task


async def wait_for(predicate: Any, within_s: float = 15.0) -> None:
    """Poll an async predicate until it is true (a consumer applies events asynchronously)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def charged_count(resources: Resources, account_id: str) -> int:
    assert resources.pool
    return int(await resources.pool.fetchval(
        "SELECT count(*) FROM billing.ledger WHERE account_id = $1 AND kind = 'usage'", account_id))
