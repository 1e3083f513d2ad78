"""Gateway fixtures: the real mock upstream process, a catalog and keys written to Redis the way the keys
service writes them, a funded wallet, and the gateway app in the test's loop (or as real processes)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import openai
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from shared import catalog as cat
from shared import crypto
from shared import events as ev
from shared.config import CommonSettings
from shared.runtime import Resources
from shared.wallet import SpendGuard
from tests import procs

PRICE = ev.ModelPrice(input=150_000, output=600_000, cached_input=75_000)  # gpt-4o-mini list, micro-USD / 1M
MOCK_KEY = "sk-upstream-secret-0123456789"


@pytest.fixture(scope="session")
def mock_upstream(common: CommonSettings) -> Iterator[procs.ServiceProcess]:
    with procs.running("mock-upstream", {"FAREGATE_MOCK_UPSTREAM_API_KEY": MOCK_KEY}) as sp:
        yield sp


@pytest.fixture(scope="session")
def gateways(common: CommonSettings, mock_upstream: procs.ServiceProcess) -> Iterator[list[procs.ServiceProcess]]:
    """Two real `faregate gateway` processes (granian) sharing this session's Redis and NATS."""
    dead = f"http://127.0.0.1:{procs.free_port()}"  # no keys/billing here: the tests write Redis themselves
    env = {"FAREGATE_KEYS_URL": dead, "FAREGATE_BILLING_URL": dead, "FAREGATE_LOG_LEVEL": "WARNING"}
    started = [procs.start("gateway", env, ready_path="/readyz") for _ in range(2)]
    try:
        yield started
    finally:
        for sp in started:
            sp.stop()


async def use_catalog(
    world: World, gateways: list[procs.ServiceProcess], channels: list[Any], models: list[Any] | None = None
) -> None:
    """Publish a catalog and wait until every gateway process has loaded it."""
    await world.set_catalog(channels, models)
    ids = {c.id for c in channels}
    async with httpx.AsyncClient() as client:

        async def loaded() -> bool:
            for gw in gateways:
                r = await client.get(
                    f"{gw.url}/internal/channels/health",
                    headers={"x-internal-token": world.common.internal_token},
                )
                if {c["channel_id"] for c in r.json()["channels"]} != ids:
                    return False
            return True

        await eventually(loaded)


def channel(
    mock: procs.ServiceProcess,
    cid: str,
    *,
    models: tuple[str, ...] = ("gpt-4o-mini",),
    fault: str = "",
    priority: int = 0,
    weight: int = 1,
    base_url: str | None = None,
    secret: str = "",
    key: str = MOCK_KEY,
) -> cat.Channel:
    """A channel on the mock; `fault` (e.g. "fail500", "delay_first_ms=3000") is appended to the upstream
    model
    name, which is how the mock is told to misbehave without the gateway forwarding any test header."""
    model_map = {m: f"{m}@{fault}" for m in models} if fault else {}
    return cat.Channel(
        id=cid,
        name=cid,
        provider="openai",
        base_url=base_url or f"{mock.url}/v1",
        api_keys_enc=(crypto.seal(key, secret),),
        models=models,
        model_map=model_map,
        priority=priority,
        weight=weight,
    )


def model(
    name: str = "gpt-4o-mini",
    *,
    kind: str = "chat",
    fallbacks: tuple[str, ...] = (),
    price: ev.ModelPrice = PRICE,
    max_output: int = 4096,
) -> cat.Model:
    return cat.Model(
        name=name,
        provider="openai",
        kind=kind,
        price=price,
        list_price=price,
        fallbacks=fallbacks,
        max_output=max_output,
    )


@dataclass
class World:
    """What the keys and billing services would have put into Redis, written directly."""

    res: Resources
    common: CommonSettings
    mock: procs.ServiceProcess

    @property
    def redis(self) -> Any:
        return self.res.redis

    async def set_catalog(
        self,
        channels: list[cat.Channel],
        models: list[cat.Model] | None = None,
        groups: tuple[cat.Group, ...] = (),
        discount_ppm: int = 0,
        publish: bool = True,
    ) -> int:
        version = time.time_ns()
        catalog = cat.Catalog(
            version=version,
            channels=tuple(channels),
            models=tuple(models or [model()]),
            groups=groups,
            discount_ppm=discount_ppm,
        )
        await self.redis.set(self.res.keys.catalog(), cat.encode(catalog))
        if publish:
            assert self.res.publisher
            await self.res.publisher.publish(ev.CatalogChanged(version=version))
        return version

    async def add_key(
        self, *, balance: int | None = 10_000_000, publish: bool = False, **overrides: Any
    ) -> tuple[str, ev.KeySnapshot]:
        secret = "fg-" + secrets.token_urlsafe(32)
        fields: dict[str, Any] = {
            "key_id": "k_" + secrets.token_hex(6),
            "key_hash": crypto.hash_api_key(secret),
            "account_id": "a_" + secrets.token_hex(6),
            "user_id": "u_1",
            "status": "active",
        }
        fields.update(overrides)
        snap = ev.KeySnapshot(**fields)
        await self.put_key(snap, publish=publish)
        if balance is not None:
            await SpendGuard(self.redis, self.res.keys).set_balance(snap.account_id, balance)
        return secret, snap

    async def put_key(self, snap: ev.KeySnapshot, *, publish: bool = True) -> None:
        await self.redis.set(self.res.keys.api_key(snap.key_hash), msgspec.json.encode(snap))
        if publish:
            assert self.res.publisher
            await self.res.publisher.publish(ev.KeyChanged(key=snap))

    async def wallet(self, account_id: str) -> dict[str, int]:
        return await SpendGuard(self.redis, self.res.keys).snapshot(account_id)

    def mock_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.mock.url}/_mock/stats", timeout=5).json()


@pytest.fixture
async def world(
    resources: Resources,
    common: CommonSettings,
    mock_upstream: procs.ServiceProcess,
) -> AsyncIterator[World]:
    w = World(resources, common, mock_upstream)
    await w.set_catalog([channel(mock_upstream, "main", secret=common.secret_key)])
    yield w


def settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(**{"first_byte_timeout_s": 5.0, "idle_timeout_s": 5.0, "retry_budget_s": 10.0, **overrides})


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return settings()


@pytest.fixture
async def gateway(
    world: World,
    common: CommonSettings,
    gateway_settings: GatewaySettings,
) -> AsyncIterator[AsyncTestClient[Any]]:
    # Keys and billing are not running in these tests (Redis is written directly); point the gateway at a port
    # where nothing listens rather than at whatever may run on the default ports of this machine.
    dead = f"http://127.0.0.1:{procs.free_port()}"
    app = create_app(gateway_settings, msgspec.structs.replace(common, keys_url=dead, billing_url=dead))
    async with AsyncTestClient(app=app, base_url="http://gateway.test", timeout=30) as client:
        yield client


def sdk(client: httpx.AsyncClient, key: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=str(client.base_url).rstrip("/") + "/v1",
        http_client=client,
        max_retries=0,
        **kw,
    )


async def usage_events(
    res: Resources, request_ids: set[str], *, wait_s: float = 10.0, settle_s: float = 0.5
) -> list[ev.UsageRecorded]:
    """Every usage.recorded for `request_ids` in the session's USAGE stream, duplicates included (so a test
    can tell "exactly one"). Waits until each id has appeared, then a little longer for stray duplicates."""
    return await _usage_events(
        res,
        lambda e: e.request_id in request_ids,
        lambda found: {e.request_id for e in found} >= request_ids,
        wait_s,
        settle_s,
    )


async def usage_events_of_key(
    res: Resources, key_id: str, count: int = 1, *, wait_s: float = 10.0, settle_s: float = 0.5
) -> list[ev.UsageRecorded]:
    """Every usage.recorded of one API key, duplicates included: for requests made through an SDK, whose
    answer's X-Request-Id the test does not see. Waits until `count` have appeared, then a little longer."""
    return await _usage_events(res, lambda e: e.key_id == key_id, lambda found: len(found) >= count, wait_s,
                               settle_s)


async def _usage_events(
    res: Resources,
    match: Callable[[ev.UsageRecorded], bool],
    enough: Callable[[list[ev.UsageRecorded]], bool],
    wait_s: float,
    settle_s: float,
) -> list[ev.UsageRecorded]:
    assert res.js and res.publisher
    await res.publisher.flush()
    deadline = time.monotonic() + wait_s
    while True:
        found: list[ev.UsageRecorded] = []
        sub = await res.js.subscribe(f"{res.common.namespace}.usage.recorded", ordered_consumer=True)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.3)
                except Exception:
                    break
                try:
                    event = ev.decode(msg.data)
                except msgspec.DecodeError:
                    # The session's stream is shared: tests/usage publishes a deliberately malformed event
                    # there (its poison-message test). Not a gateway event, so not ours to judge.
                    continue
                if isinstance(event, ev.UsageRecorded) and match(event):
                    found.append(event)
        finally:
            await sub.unsubscribe()
        if enough(found) or time.monotonic() > deadline:
            if settle_s:
                await asyncio.sleep(settle_s)
                settle_s = 0
                continue
            return found
        await asyncio.sleep(0.2)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
