"""Fixtures for the usage service: running its consumers against the session's real NATS and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.usage import consumer
from services.usage.app import create_app
from services.usage.config import UsageSettings
from shared.config import CommonSettings
from shared.events import ModelPrice, UsageCharged, UsageRecorded, new_id
from shared.runtime import Resources


@pytest.fixture
async def clean_usage(resources: Resources) -> AsyncIterator[Resources]:
    """The session database is shared by every test: start each usage test from empty tables."""
    assert resources.pool
    await resources.pool.execute(
        "TRUNCATE usage.request_log, usage.pending_charges, usage.usage_hourly, usage.usage_daily,"
        " usage.account_balance, usage.processed_events"
    )
    yield resources


@pytest.fixture
async def usage_consumers(clean_usage: Resources) -> AsyncIterator[Resources]:
    """Both usage consumers running in this test's loop, on this session's streams."""
    res = clean_usage
    assert res.js and res.pool
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(consumer.run(res.js, res.common.namespace, res.pool, spec, stop))
        for spec in (consumer.LOG_CONSUMER, consumer.BALANCE_CONSUMER)
    ]
    yield res
    stop.set()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


PRICE = ModelPrice(input=150_000, output=600_000)


def recorded(account_id: str = "acct-a", key_id: str = "key-a1", model: str = "gpt-4o-mini", *,
             at: datetime | None = None, status: int = 200, prompt: int = 100, completion: int = 50,
             cached: int = 0, latency_ms: int = 420, ttft_ms: int = 90,
             error_code: str = "") -> UsageRecorded:
    rid = new_id()
    return UsageRecorded(
        event_id=rid, request_id=rid, occurred_at=at or datetime.now(UTC), account_id=account_id,
        key_id=key_id,
        user_id=f"user-{account_id}", model=model, upstream_model=model, channel_id="ch-1", dialect="openai",
        status=status, error_code=error_code, prompt_tokens=prompt, completion_tokens=completion,
        cached_tokens=cached, latency_ms=latency_ms, ttft_ms=ttft_ms, price=PRICE,
    )


def charged(rec: UsageRecorded, amount: int, balance: int, *, at: datetime | None = None) -> UsageCharged:
    return UsageCharged(
        request_id=rec.request_id, usage_event_id=rec.event_id, account_id=rec.account_id, key_id=rec.key_id,
        model=rec.model, channel_id=rec.channel_id, amount_micros=amount, cost_micros=amount // 2,
        balance_micros=balance, occurred_at=at or datetime.now(UTC),
    )


@pytest.fixture
async def usage_client(clean_usage: Resources) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The usage API in this test's loop (consumers off: tests put their events in directly)."""
    app = create_app(UsageSettings(retention_interval_s=0), clean_usage.common, consumers=False)
    async with AsyncTestClient(app=app) as client:
        yield client


def as_user(common: CommonSettings, account_id: str) -> dict[str, str]:
    return {"X-Internal-Token": common.internal_token, "X-Account-Id": account_id, "X-Role": "user"}


def as_admin(common: CommonSettings) -> dict[str, str]:
    return {"X-Internal-Token": common.internal_token, "X-Role": "admin", "X-User-Id": "ops"}
