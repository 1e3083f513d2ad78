"""Kill the billing process (SIGKILL, no goodbye) in the middle of a stream of usage events and start it
again: every event is charged exactly once, and Redis ends where the ledger is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.billing import audit
from services.billing.funding import Funding
from shared import bus, cache
from shared.cache import Keys
from shared.config import CommonSettings
from shared.events import ModelPrice, new_id
from shared.runtime import Resources
from shared.wallet import SpendGuard
from tests import procs
from tests.billing.conftest import balance, charged_count, credit, usage, wait_for

PRICE = ModelPrice(input=1_000_000, output=3_000_000)


@pytest.fixture
async def lane(common: CommonSettings, tmp_path: Path) -> AsyncIterator[tuple[str, bus.Publisher]]:
    """A NATS namespace and Redis prefix of this test's own: its durable consumer starts fresh, with the short
    ack wait below, whatever other tests declared before it."""
    ns = f"bcrash{new_id()[:8]}"
    nc = await bus.connect(common.nats_url, name="billing-crash-test")
    js = nc.jetstream()
    await bus.ensure_streams(js, ns)
    publisher = bus.Publisher(js, ns, tmp_path / "spool")
    publisher.start()
    try:
        yield ns, publisher
    finally:
        await publisher.close()
        for spec in bus.STREAMS:
            with contextlib.suppress(Exception):
                await js.delete_stream(bus.stream_name(ns, spec))
        await nc.close()
        r = cache.client(common.redis_url)
        async for key in r.scan_iter(f"{ns}:*", count=1000):
            await r.delete(key)
        await r.aclose()


async def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(resources: Resources, funding: Funding,
                                                                    lane: tuple[str, bus.Publisher]) -> None:
    assert resources.pool and resources.redis
    ns, publisher = lane
    spend_guard = SpendGuard(resources.redis, Keys(ns))
    accounts = [new_id() for _ in range(5)]
    for a in accounts:
        await credit(funding, a, 1_000_000_000)
    evs = [usage(accounts[i % 5], price=PRICE, prompt_tokens=100 + i, completion_tokens=i % 97)
           for i in range(4_000)]
    expected = {a: 0 for a in accounts}
    for e in evs:
        expected[e.account_id] += e.prompt_tokens * 1 + e.completion_tokens * 3
        # As the gateway does: the actual cost is pending in Redis until billing debits it.
        await spend_guard.redis.hincrby(spend_guard.keys.wallet(e.account_id), "pending",
                                        e.prompt_tokens + 3 * e.completion_tokens)

    # A short ack wait: the batches the killed process had fetched come back in seconds, not the default 15.
    env = {"FAREGATE_NAMESPACE": ns, "FAREGATE_BILLING_USAGE_BATCH": "100",
           "FAREGATE_BILLING_USAGE_ACK_WAIT_S": "2"}
    billing = procs.start("billing", env)
    try:
        async def feed() -> None:
            for i in range(0, len(evs), 200):
                for e in evs[i:i + 200]:
                    publisher.publish_nowait(e)
                await publisher.flush()
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(feed())

        async def partly_applied() -> bool:
            n = sum([await charged_count(resources, a) for a in accounts])
            return n >= 300

        await wait_for(partly_applied, within_s=60)
        billing.kill()  # SIGKILL: mid-batch, mid-publish, before acks — wherever it was
        killed_at = sum([await charged_count(resources, a) for a in accounts])
        assert killed_at < len(evs), "the stream was already fully applied; the kill proved nothing"
        await feeder
        billing = procs.start("billing", env)

        async def all_applied() -> bool:
            return sum([await charged_count(resources, a) for a in accounts]) >= len(evs)

        await wait_for(all_applied, within_s=120)
        await asyncio.sleep(1.0)  # anything doubled would land now
    finally:
        billing.stop()

    assert sum([await charged_count(resources, a) for a in accounts]) == len(evs)
    for a in accounts:
        assert await balance(resources, a) == 1_000_000_000 - expected[a]
        snap = await spend_guard.snapshot(a)
        assert (snap["balance"], snap["pending"]) == (1_000_000_000 - expected[a], 0)
    assert await audit.verify(resources.pool) == []
