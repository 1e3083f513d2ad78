"""One paid request end to end (issue 2): the demo account and key seeded by keys, its wallet funded by
billing, real billing and usage processes consuming the gateway's usage.recorded. The OpenAI SDK calls the
gateway, streaming and not; the wallet goes down by exactly the priced cost, one log row exists per request,
and the same usage.recorded published again changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.billing.seed import seed_demo as fund_demo
from services.gateway.app import create_app
from services.keys.seed import seed_demo
from shared import catalog as cat
from shared import events as ev
from shared.config import CommonSettings
from shared.pricing import cost_micros
from shared.runtime import Resources
from tests import procs
from tests.gateway.conftest import eventually, sdk, settings, usage_events

FUNDS = 5_000_000  # $5


@pytest.fixture(scope="module")
def stack(common: CommonSettings) -> Iterator[dict[str, procs.ServiceProcess]]:
    """A mock that takes any upstream key (the demo channel's placeholder), and billing and usage."""
    env = {"FAREGATE_LOG_LEVEL": "WARNING"}
    started: dict[str, procs.ServiceProcess] = {}
    try:
        for name in ("mock-upstream", "billing", "usage"):
            started[name] = procs.start(name, env, ready_path="/readyz" if name != "mock-upstream" else "/healthz")
        yield started
    finally:
        for sp in started.values():
            sp.stop()


@pytest.fixture
async def demo_gateway(
    common: CommonSettings, resources: Resources, stack: dict[str, procs.ServiceProcess]
) -> AsyncIterator[tuple[AsyncTestClient[Any], Any]]:
    # Other gateway tests write catalogs straight into Redis with clock-based versions; make room for the one
    # keys seeds here (keys never overwrites a newer snapshot).
    assert resources.redis
    await resources.redis.delete(resources.keys.catalog())
    demo = await seed_demo(common, upstream_base_url=stack["mock-upstream"].url)
    await fund_demo(common, account_id=demo.account_id, amount_micros=FUNDS)
    wired = msgspec.structs.replace(common, billing_url=stack["billing"].url)
    async with AsyncTestClient(app=create_app(settings(), wired), base_url="http://gateway.test") as client:
        yield client, demo


async def balance(common: CommonSettings, billing: procs.ServiceProcess, account_id: str) -> int:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{billing.url}/internal/wallets/{account_id}/load",
            headers={"x-internal-token": common.internal_token},
        )
    r.raise_for_status()
    return int(r.json()["balance_micros"])


async def test_paid_requests_debit_exactly_their_cost_once(
    common: CommonSettings,
    resources: Resources,
    stack: dict[str, procs.ServiceProcess],
    demo_gateway: tuple[AsyncTestClient[Any], Any],
) -> None:
    gateway, demo = demo_gateway
    start = await balance(common, stack["billing"], demo.account_id)
    client = sdk(gateway, demo.api_key)
    messages: list[Any] = [{"role": "user", "content": "Say something about lighthouses."}]
    whole = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    streamed = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in streamed.parse()]
    usages = [whole.parse().usage, chunks[-1].usage]
    rids = {whole.headers["x-request-id"], streamed.headers["x-request-id"]}

    assert resources.redis
    catalog = cat.decode(await resources.redis.get(resources.keys.catalog()))
    price = next(m.price for m in catalog.models if m.name == "gpt-4o-mini")
    group = next((g for g in catalog.groups if g.name == "default"), cat.Group(name="default"))
    expected = sum(
        cost_micros(
            price,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cached_tokens=(u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0,
            group_ratio_ppm=group.ratio_ppm,
            discount_ppm=catalog.discount_ppm,
        )
        for u in usages
        if u is not None
    )
    assert expected > 0

    async def debited() -> bool:
        return await balance(common, stack["billing"], demo.account_id) == start - expected

    await eventually(debited, 20)

    assert resources.pool
    rows_sql = "SELECT count(*) FROM usage.request_log WHERE request_id = ANY($1::text[])"

    async def logged() -> bool:
        assert resources.pool
        return bool(await resources.pool.fetchval(rows_sql, list(rids)) == 2)

    await eventually(logged, 20)

    # The same event again, past JetStream's de-duplication (another message id): nothing changes.
    events = await usage_events(resources, rids)
    assert resources.js and len(events) == 2
    for event in events:
        await resources.js.publish(
            f"{common.namespace}.usage.recorded",
            ev.encode(event),
            headers={"Nats-Msg-Id": "replay-" + event.event_id},
        )
    await asyncio.sleep(3)
    assert await balance(common, stack["billing"], demo.account_id) == start - expected
    assert await resources.pool.fetchval(rows_sql, list(rids)) == 2


async def test_a_wallet_missing_from_redis_is_loaded_from_billing(
    common: CommonSettings,
    resources: Resources,
    stack: dict[str, procs.ServiceProcess],
    demo_gateway: tuple[AsyncTestClient[Any], Any],
) -> None:
    gateway, demo = demo_gateway
    assert resources.redis
    await resources.redis.delete(resources.keys.wallet(demo.account_id))  # e.g. Redis restarted empty
    reply = await sdk(gateway, demo.api_key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    assert await resources.redis.hget(resources.keys.wallet(demo.account_id), "balance") is not None
