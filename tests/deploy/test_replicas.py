"""Several replicas on one set of engines (issue 9): two gateways, two billing and two usage processes share
one Postgres, Redis and NATS, as the Kubernetes Deployments do. Traffic goes through both gateways; every
request is debited once and logged once, the wallet moves by exactly the priced cost, the two replicas of each
consumer split the work between them (one durable consumer per service), and when one replica of each stops,
the other takes over the rest. A gateway stopped in the middle of a streamed response lets it finish first.

Every part is a real `faregate <service>` process; each has its own data directory, as each pod has its own
emptyDir.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import nats
import openai
import pytest
from nats.js.errors import NotFoundError

from services.billing import seed as billing_seed
from services.keys import seed as keys_seed
from shared import bus, cache, catalog
from shared.config import CommonSettings
from shared.pricing import cost_micros
from tests import procs

MODEL = "gpt-4o-mini"
FIRST_WAVE = 24
SECOND_WAVE = 12


@dataclass
class Stack:
    mock: procs.ServiceProcess
    keys: procs.ServiceProcess
    gateways: list[procs.ServiceProcess]
    billing: list[procs.ServiceProcess]
    usage: list[procs.ServiceProcess]


def _start(name: str, env: dict[str, str], started: list[procs.ServiceProcess]) -> procs.ServiceProcess:
    own = {**env, "FAREGATE_DATA_DIR": tempfile.mkdtemp(prefix=f"faregate-replica-{name}-")}
    sp = procs.start(name, own, ready_path="/readyz")
    started.append(sp)
    return sp


@pytest.fixture(scope="module")
def stack(common: CommonSettings) -> Iterator[Stack]:
    started: list[procs.ServiceProcess] = []
    try:
        mock = _start("mock-upstream", {}, started)
        keys = _start("keys", {}, started)
        # Like the Services in the cluster, each URL names one address: here the replica that keeps running.
        billing = [_start("billing", {"FAREGATE_KEYS_URL": keys.url}, started) for _ in range(2)]
        usage = [_start("usage", {"FAREGATE_KEYS_URL": keys.url}, started) for _ in range(2)]
        urls = {"FAREGATE_KEYS_URL": keys.url, "FAREGATE_BILLING_URL": billing[1].url,
                "FAREGATE_USAGE_URL": usage[1].url}
        gateways = [_start("gateway", urls, started) for _ in range(2)]
        yield Stack(mock, keys, gateways, billing, usage)
    finally:
        for sp in reversed(started):
            sp.stop()


@dataclass(frozen=True)
class Sent:
    request_id: str
    gateway: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


async def _one(client: openai.AsyncOpenAI, gateway: int, n: int) -> Sent:
    messages = [{"role": "user", "content": f"Request {n}: tell me about rivers."}]
    if n % 2:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=48)  # type: ignore[arg-type]
        usage = raw.parse().usage
    else:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=48, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        usage = None
        async for chunk in raw.parse():
            usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens > 0
    details = usage.prompt_tokens_details
    return Sent(raw.headers["x-request-id"], gateway, usage.prompt_tokens, usage.completion_tokens,
                (details.cached_tokens or 0) if details else 0)


async def _traffic(stack: Stack, api_key: str, count: int, start: int) -> list[Sent]:
    """`count` requests, alternating between the two gateways, half of them streamed, four at a time."""
    clients = [openai.AsyncOpenAI(base_url=g.url + "/v1", api_key=api_key, max_retries=0)
               for g in stack.gateways]
    limit = asyncio.Semaphore(4)

    async def send(n: int) -> Sent:
        async with limit:
            return await _one(clients[n % 2], n % 2, n)

    try:
        return list(await asyncio.gather(*(send(n) for n in range(start, start + count))))
    finally:
        for c in clients:
            await c.close()


async def _count(pool: asyncpg.Pool, sql: str, ids: list[str], want: int, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    got = -1
    while time.monotonic() < deadline:
        got = int(await pool.fetchval(sql, ids))
        if got >= want:
            return got
        await asyncio.sleep(0.2)
    return got


def _metric(sp: procs.ServiceProcess, name: str, labels: str = "") -> float:
    text = httpx.get(sp.url + "/metrics", timeout=5).text
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _settled(read: Callable[[], float], want: float, seconds: float = 10) -> float:
    """A counter is bumped just after its transaction commits: give it a moment to reach `want`."""
    deadline = time.monotonic() + seconds
    got = read()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.1)
        got = read()
    return float(got)


async def _consumers_idle(common: CommonSettings, seconds: float = 60) -> None:
    """Until billing's and usage's durable consumers of usage events have nothing pending or unacked: in a full
    test run, events other tests left in the session's stream reach these processes first."""
    nc = await nats.connect(common.nats_url)
    try:
        js = nc.jetstream()
        stream = bus.stream_name(common.namespace, next(s for s in bus.STREAMS if s.name == "USAGE"))
        deadline = time.monotonic() + seconds
        while True:
            try:
                infos = [await js.consumer_info(stream, name) for name in ("billing-usage", "usage-log")]
            except NotFoundError:  # a service declares its consumer as it starts: not there yet
                infos = []
            if infos and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return
            assert time.monotonic() < deadline, f"consumers still busy: {infos}"
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def _debited(sp: procs.ServiceProcess) -> float:
    return _metric(sp, "faregate_billing_usage_events_total", '{outcome="debited"}')


def _logged(sp: procs.ServiceProcess) -> float:
    return _metric(sp, "faregate_usage_log_rows_total")


async def _price(common: CommonSettings, sent: list[Sent]) -> int:
    r = cache.client(common.redis_url)
    try:
        raw = await r.get(cache.Keys(common.namespace).catalog())
    finally:
        await r.aclose()
    assert raw is not None
    cat = catalog.decode(bytes(raw))
    price = next(m.price for m in cat.models if m.name == MODEL)
    ratio = next((g.ratio_ppm for g in cat.groups if g.name == "default"), 1_000_000)
    return sum(cost_micros(price, prompt_tokens=s.prompt_tokens, completion_tokens=s.completion_tokens,
                           cached_tokens=s.cached_tokens, group_ratio_ppm=ratio,
                           discount_ppm=cat.discount_ppm)
               for s in sent)


LEDGER = "SELECT count(*) FROM billing.ledger WHERE request_id = ANY($1)"
LOG = "SELECT count(*) FROM usage.request_log WHERE request_id = ANY($1)"
PER_REQUEST = """
    SELECT r.id,
           (SELECT count(*) FROM billing.ledger l WHERE l.request_id = r.id) AS debits,
           (SELECT count(*) FROM usage.request_log u WHERE u.request_id = r.id) AS rows
    FROM unnest($1::text[]) AS r(id)
"""


@dataclass(frozen=True)
class Payer:
    account_id: str
    api_key: str


async def _payer(common: CommonSettings, stack: Stack) -> Payer:
    """The demo seed brings the catalog and the mock channel; the payer is a fresh account of its own, so no
    other test's traffic moves the balance this test checks."""
    await keys_seed.seed_demo(common, upstream_base_url=stack.mock.url)
    async with httpx.AsyncClient(base_url=stack.keys.url) as keys_api:
        reg = await keys_api.post("/api/auth/register",
                                  json={"email": f"replicas-{time.time_ns()}@example.com",
                                        "password": "a long enough password"})
    assert reg.status_code == 201, reg.text
    payer = Payer(reg.json()["account"]["id"], reg.json()["api_key"])
    await billing_seed.seed_demo(common, account_id=payer.account_id, amount_micros=50_000_000)
    return payer


async def test_two_of_everything_debit_and_log_each_request_once(common: CommonSettings,
                                                                 stack: Stack) -> None:
    payer = await _payer(common, stack)
    pool = await asyncpg.create_pool(common.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        before = int(await pool.fetchval("SELECT balance_micros FROM billing.wallets WHERE account_id = $1",
                                         payer.account_id))
        assert before == 50_000_000
        await _consumers_idle(common)
        billing_base = [_debited(sp) for sp in stack.billing]
        usage_base = [_logged(sp) for sp in stack.usage]

        # Both gateways serve; both replicas of each consumer are up.
        first = await _traffic(stack, payer.api_key, FIRST_WAVE, 0)
        assert {s.gateway for s in first} == {0, 1}
        ids = [s.request_id for s in first]
        assert len(set(ids)) == FIRST_WAVE
        assert await _count(pool, LEDGER, ids, FIRST_WAVE) == FIRST_WAVE
        assert await _count(pool, LOG, ids, FIRST_WAVE) == FIRST_WAVE

        # Each event was applied by exactly one replica: the per-process counters add up to the traffic.
        await _consumers_idle(common)
        _settled(lambda: sum(_debited(sp) for sp in stack.billing), sum(billing_base) + FIRST_WAVE)
        _settled(lambda: sum(_logged(sp) for sp in stack.usage), sum(usage_base) + FIRST_WAVE)
        billing_first = [_debited(sp) - base for sp, base in zip(stack.billing, billing_base, strict=True)]
        usage_first = [_logged(sp) - base for sp, base in zip(stack.usage, usage_base, strict=True)]
        assert sum(billing_first) == FIRST_WAVE, billing_first
        assert sum(usage_first) == FIRST_WAVE, usage_first

        # One replica of each consumer stops (a rollout, a node drain); the other takes the rest.
        for stopping in (stack.billing[0], stack.usage[0]):
            code = stopping.stop()
            assert code == 0, f"{stopping.name} exited {code}:\n{stopping.log()[-3000:]}"
        second = await _traffic(stack, payer.api_key, SECOND_WAVE, FIRST_WAVE)
        sent = first + second
        ids = [s.request_id for s in sent]
        assert len(set(ids)) == len(sent)
        assert await _count(pool, LEDGER, ids, len(sent)) == len(sent)
        assert await _count(pool, LOG, ids, len(sent)) == len(sent)
        want_billing = billing_base[1] + billing_first[1] + SECOND_WAVE
        want_usage = usage_base[1] + usage_first[1] + SECOND_WAVE
        assert _settled(lambda: _debited(stack.billing[1]), want_billing) == want_billing
        assert _settled(lambda: _logged(stack.usage[1]), want_usage) == want_usage

        # Once each, and the wallet moved by exactly the priced cost of what was sent.
        rows = await pool.fetch(PER_REQUEST, ids)
        assert {(r["debits"], r["rows"]) for r in rows} == {(1, 1)}
        after = int(await pool.fetchval("SELECT balance_micros FROM billing.wallets WHERE account_id = $1",
                                        payer.account_id))
        expected = await _price(common, sent)
        assert expected > 0
        assert before - after == expected
    finally:
        await pool.close()


SLOW_MODEL = "gpt-4o"
SLOW_CHUNKS = 24


async def _set_model_map(common: CommonSettings, model_map: dict[str, str]) -> None:
    from services.keys import catalog_admin
    from services.keys.config import KeysSettings
    from services.keys.context import Ctx
    from services.keys.schemas import ChannelPatch
    from shared import config
    from shared.runtime import open_resources

    async with open_resources(common, "deploy-test", pool_size=2) as res:
        await catalog_admin.update_channel(Ctx.from_resources(config.load(KeysSettings), res), "mock",
                                           ChannelPatch(model_map=model_map))


async def _slow_streams_on_the_mock(common: CommonSettings, gateway: procs.ServiceProcess,
                                    api_key: str) -> None:
    """Make the demo channel stream SLOW_MODEL slowly (the mock reads its faults from the upstream model
    name), then wait until `gateway` routes with the new catalog: its streams of SLOW_MODEL turn slow."""
    fault = f"{SLOW_MODEL}@delay_chunk_ms=250;chunks={SLOW_CHUNKS}"
    await _set_model_map(common, {SLOW_MODEL: fault})
    async with httpx.AsyncClient(timeout=30) as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            started = time.monotonic()
            async with client.stream("POST", gateway.url + "/v1/chat/completions",
                                     headers={"authorization": f"Bearer {api_key}"},
                                     json={"model": SLOW_MODEL, "stream": True, "max_tokens": 20,
                                           "messages": [{"role": "user", "content": "probe"}]}) as r:
                assert r.status_code == 200
                events = 0
                async for line in r.aiter_lines():
                    events += line.startswith("data:")
                    if events == 3:
                        break
            if time.monotonic() - started > 0.4:  # three events 250 ms apart: the new catalog is in use
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the gateway never picked up the slow channel")


async def test_a_stopping_gateway_finishes_the_stream_in_flight(common: CommonSettings, stack: Stack) -> None:
    """What the pod's preStop and termination grace rely on: SIGTERM in the middle of a streamed response lets
    it finish, its usage is still recorded and debited, and the process exits cleanly."""
    payer = await _payer(common, stack)
    leaving = stack.gateways[0]
    await _slow_streams_on_the_mock(common, leaving, payer.api_key)
    client = openai.AsyncOpenAI(base_url=leaving.url + "/v1", api_key=payer.api_key, max_retries=0)
    try:
        await _stream_while_stopping(client, leaving, common)
    finally:
        await client.close()
        await _set_model_map(common, {})  # the demo channel as the seed made it, for tests that follow


async def _stream_while_stopping(client: openai.AsyncOpenAI, leaving: procs.ServiceProcess,
                                 common: CommonSettings) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=SLOW_MODEL, messages=[{"role": "user", "content": "A long story, please."}],
        max_tokens=200, stream=True, stream_options={"include_usage": True})
    request_id = raw.headers["x-request-id"]
    pieces, usage, stopping = 0, None, None
    started = time.monotonic()
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
        usage = chunk.usage or usage
        if stopping is None:  # the first event is here: the pod is being deleted now
            stopping = asyncio.create_task(asyncio.to_thread(leaving.stop))
    assert stopping is not None
    exit_code = await stopping
    assert time.monotonic() - started > 3  # it really was a long stream, and SIGTERM came early in it
    assert pieces >= SLOW_CHUNKS - 1 and usage is not None and usage.completion_tokens > 0
    assert exit_code == 0, leaving.log()[-3000:]
    pool = await asyncpg.create_pool(common.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        assert await _count(pool, LEDGER, [request_id], 1) == 1
        assert await _count(pool, LOG, [request_id], 1) == 1
    finally:
        await pool.close()
