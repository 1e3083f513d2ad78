"""One paid request, end to end (issue 2): the official OpenAI SDK calls the gateway, streaming and not; the
gateway forwards to the mock upstream channel; billing debits the wallet by exactly the priced cost, once; usage
stores one metadata row per request; and the same `usage.recorded` event published again changes nothing.

Every part is a real process (`faregate <service>`) on real Postgres, Redis and NATS.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import asyncpg
import httpx
import msgspec
import nats
import openai
import pytest

from services.billing import seed as billing_seed
from services.keys import seed as keys_seed
from shared import bus, catalog, events
from shared.config import CommonSettings
from shared.pricing import cost_micros
from tests import procs

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def stack(common: CommonSettings) -> Iterator[dict[str, procs.ServiceProcess]]:
    ports = {name: procs.free_port() for name in ("keys", "billing", "usage", "gateway", "mock-upstream")}
    env = {
        "FAREGATE_KEYS_URL": f"http://127.0.0.1:{ports['keys']}",
        "FAREGATE_BILLING_URL": f"http://127.0.0.1:{ports['billing']}",
        "FAREGATE_USAGE_URL": f"http://127.0.0.1:{ports['usage']}",
    }
    os.environ.update(env)
    started: dict[str, procs.ServiceProcess] = {}
    try:
        for name in ("mock-upstream", "keys", "billing", "usage", "gateway"):
            started[name] = procs.start(name, env, port=ports[name], ready_path="/readyz")
        yield started
    finally:
        for sp in reversed(list(started.values())):
            sp.stop()
            print(f"--- {sp.name} log (tail) ---\n{sp.log()[-3000:]}")  # shown by pytest only on failure
        for k in env:
            os.environ.pop(k, None)


async def _register(stack: dict[str, procs.ServiceProcess], who: str) -> tuple[str, str]:
    """A new account of its own through keys' sign-up: (account id, its first API key)."""
    async with httpx.AsyncClient(base_url=stack["keys"].url) as keys_api:
        reg = await keys_api.post("/api/auth/register",
                                  json={"email": f"{who}-{events.new_id()[:8]}@example.com",
                                        "password": "a long enough password"})
    assert reg.status_code == 201, reg.text
    return reg.json()["account"]["id"], reg.json()["api_key"]


async def _balance(pool: asyncpg.Pool, account_id: str) -> int:
    return int(
        await pool.fetchval("SELECT balance_micros FROM billing.wallets WHERE account_id = $1", account_id)
    )


async def _wait_for(pool: asyncpg.Pool, sql: str, *args: object, want: int, seconds: float = 20) -> int:
    deadline = time.monotonic() + seconds
    got = -1
    while time.monotonic() < deadline:
        got = int(await pool.fetchval(sql, *args))
        if got >= want:
            return got
        await asyncio.sleep(0.1)
    return got


async def _usage_event(common: CommonSettings, request_id: str) -> bytes:
    nc = await nats.connect(common.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            bus.subject(common.namespace, "usage.recorded"),
            ordered_consumer=True,
            deliver_policy=bus.DeliverPolicy.ALL,
        )
        while True:
            msg = await sub.next_msg(timeout=5)
            try:
                found = events.decode(msg.data).event_id == request_id
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # other tests publish poison messages into this session's stream
            if found:
                return msg.data
    finally:
        await nc.close()


async def test_paid_request_debits_exactly_once_and_logs_one_row(
    common: CommonSettings, stack: dict[str, procs.ServiceProcess]
) -> None:
    # The demo seed brings the catalog and the mock channel; the payer is a fresh account of its own, so other
    # tests' traffic on the demo account cannot move this balance.
    demo = await keys_seed.seed_demo(common, upstream_base_url=stack["mock-upstream"].url)
    account_id, api_key = await _register(stack, "payer")
    assert account_id != demo.account_id
    await billing_seed.seed_demo(common, account_id=account_id, amount_micros=5_000_000)
    pool = await asyncpg.create_pool(common.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        before = await _balance(pool, account_id)
        assert before == 5_000_000

        client = openai.AsyncOpenAI(
            base_url=stack["gateway"].url + "/v1", api_key=api_key, max_retries=0
        )
        plain = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Say something about trains."}], max_tokens=64
        )
        reply = plain.parse()
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        rid_plain = plain.headers["x-request-id"]

        stream = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "And about boats?"}],
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
        rid_stream = stream.headers["x-request-id"]
        text, usage = [], None
        async for chunk in stream.parse():
            text += [c.delta.content or "" for c in chunk.choices]
            usage = chunk.usage or usage
        assert "".join(text) and usage is not None

        # The price the gateway charged at is the catalog's, in the default group, with no platform discount.
        cat = catalog.decode(await _redis_catalog(common))
        price = next(m.price for m in cat.models if m.name == MODEL)
        ratio = next((g.ratio_ppm for g in cat.groups if g.name == "default"), 1_000_000)
        expected = sum(
            cost_micros(
                price,
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cached_tokens=(u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0,
                group_ratio_ppm=ratio,
                discount_ppm=cat.discount_ppm,
            )
            for u in (reply.usage, usage)
        )
        assert expected > 0

        debited = await _wait_for(
            pool,
            "SELECT count(*) FROM billing.ledger WHERE request_id = ANY($1)",
            [rid_plain, rid_stream],
            want=2,
        )
        assert debited == 2
        assert await _balance(pool, account_id) == before - expected
        logged = await _wait_for(
            pool,
            "SELECT count(*) FROM usage.request_log WHERE request_id = ANY($1)",
            [rid_plain, rid_stream],
            want=2,
        )
        assert logged == 2

        # The same event again (past JetStream's de-dup: a new Nats-Msg-Id) changes neither balance nor log.
        raw = await _usage_event(common, rid_plain)
        nc = await nats.connect(common.nats_url)
        try:
            await nc.jetstream().publish(
                bus.subject(common.namespace, "usage.recorded"),
                raw,
                headers={"Nats-Msg-Id": f"replay-{rid_plain}"},
            )
        finally:
            await nc.close()
        await _wait_consumers_idle(common)
        assert await _balance(pool, account_id) == before - expected
        assert (
            await pool.fetchval("SELECT count(*) FROM billing.ledger WHERE request_id = $1", rid_plain) == 1
        )
        assert (
            await pool.fetchval("SELECT count(*) FROM usage.request_log WHERE request_id = $1", rid_plain)
            == 1
        )
    finally:
        await pool.close()


async def _redis_catalog(common: CommonSettings) -> bytes:
    from shared import cache

    r = cache.client(common.redis_url)
    try:
        raw = await r.get(cache.Keys(common.namespace).catalog())
        assert raw is not None
        return bytes(raw)
    finally:
        await r.aclose()


async def _wait_consumers_idle(common: CommonSettings, seconds: float = 20) -> None:
    """Until billing's and usage's durable consumers on usage.recorded have nothing pending or unacked."""
    nc = await nats.connect(common.nats_url)
    try:
        js = nc.jetstream()
        stream = bus.stream_name(common.namespace, bus.STREAMS[0])
        names = [c.name for c in await js.consumers_info(stream) if c.config.durable_name]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            infos = [await js.consumer_info(stream, n) for n in names]
            if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"consumers still busy: {infos}")
    finally:
        await nc.close()


async def test_a_key_and_a_wallet_missing_from_redis_are_fetched_from_keys_and_billing(
    common: CommonSettings, stack: dict[str, procs.ServiceProcess]
) -> None:
    # Redis lost both (a flush, a fresh Redis) and this gateway never saw the key's event: it asks keys for the key
    # (GET /internal/keys/{hash}) and billing to load the wallet (POST /internal/wallets/{id}/load), and serves.
    from litestar.testing import AsyncTestClient

    from services.gateway.app import create_app
    from shared import cache, crypto
    from tests.gateway.conftest import sdk, settings

    await keys_seed.seed_demo(common, upstream_base_url=stack["mock-upstream"].url)
    account_id, api_key = await _register(stack, "lost")
    await billing_seed.seed_demo(common, account_id=account_id, amount_micros=1_000_000)
    names = cache.Keys(common.namespace)
    key_name, wallet_name = names.api_key(crypto.hash_api_key(api_key)), names.wallet(account_id)
    r = cache.client(common.redis_url)
    wired = msgspec.structs.replace(common, keys_url=stack["keys"].url, billing_url=stack["billing"].url)
    try:
        assert await r.delete(key_name, wallet_name) == 2
        async with AsyncTestClient(app=create_app(settings(), wired), base_url="http://gateway.test") as gateway:
            reply = await sdk(gateway, api_key).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=8
            )
        assert reply.choices[0].message.content
        # keys wrote the snapshot back as it answered; billing loaded the wallet.
        assert await r.exists(key_name) == 1 and await r.exists(wallet_name) == 1
    finally:
        await r.aclose()
