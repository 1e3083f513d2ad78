"""The gateway when its own infrastructure fails, with private NATS and Redis servers really stopped:

- NATS down: requests are still served; their usage events go to the disk spool and reach JetStream once it is
  back, each exactly once.
- Redis down: the gateway stays up; keys it knows keep authenticating from the in-process cache; rate limits
  fail open; the spend guard keeps reserving against the worker's last known balance (never above it).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from shared import bus
from shared import events as ev
from shared.config import CommonSettings
from shared.wallet import SpendGuard
from tests import procs
from tests.gateway.conftest import World, eventually, settings

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
NATS_SERVER = Path(sys.executable).with_name("nats-server")
DEAD = f"http://127.0.0.1:{procs.free_port()}"  # keys and billing are not running here


class Server:
    """A private server process we can stop and start again on the same port and data."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.argv[0]} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_nats() -> Iterator[tuple[Server, int]]:
    port = procs.free_port()
    store = tempfile.mkdtemp(prefix="fg-nats-")
    server = Server([str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store])
    server.start(port)
    try:
        yield server, port
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
def private_redis() -> Iterator[tuple[Server, int]]:
    port = procs.free_port()
    server = Server(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    server.start(port)
    try:
        yield server, port
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def gateway_on(common: CommonSettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(
        app=create_app(settings(), common), base_url="http://gateway.test", timeout=30
    ) as client:
        yield client


async def chat(client: AsyncTestClient[Any], secret: str) -> Any:
    return await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 20},
        headers={"authorization": f"Bearer {secret}"},
    )


async def stream_ids(nats_url: str, namespace: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(bus.subject(namespace, "usage.recorded"), ordered_consumer=True)
        out = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                break
            out.append(ev.decode(msg.data).event_id)
        return out
    finally:
        await nc.close()


async def test_nats_down_events_are_spooled_and_delivered_once_when_it_returns(
    world: World, private_nats: tuple[Server, int]
) -> None:
    server, port = private_nats
    url = f"nats://127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="fg-gw-")
    common = msgspec.structs.replace(world.common, nats_url=url, data_dir=data_dir, keys_url=DEAD, billing_url=DEAD)
    secret, _ = await world.add_key()
    spool = Path(data_dir) / "spool" / "gateway"
    async with gateway_on(common) as gateway:
        before = await chat(gateway, secret)
        assert before.status_code == 200
        server.stop()
        during = [await chat(gateway, secret) for _ in range(5)]
        assert [r.status_code for r in during] == [200] * 5  # clients notice nothing

        def spooled() -> int:
            return sum(len(p.read_bytes().splitlines()) for p in spool.glob("*.jsonl"))

        async def all_spooled() -> bool:
            return spooled() >= 5

        await eventually(all_spooled, 20)
        # NATS down shows on /readyz, but as "degraded": the pod stays in service and keeps spooling.
        ready = await gateway.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["nats"].startswith("error")
        server.start(port)
        ids = {r.headers["x-request-id"] for r in [before, *during]}

        async def delivered() -> bool:
            return set(await stream_ids(url, common.namespace)) >= ids

        await eventually(delivered, 30)
        await asyncio.sleep(1.5)  # give a stray duplicate the chance to show up
        seen = [i for i in await stream_ids(url, common.namespace) if i in ids]
        assert sorted(seen) == sorted(ids)  # every event, none twice
        assert spooled() == 0
    shutil.rmtree(data_dir, ignore_errors=True)


async def test_redis_down_keeps_known_keys_working_within_the_last_known_balance(
    world: World, private_redis: tuple[Server, int]
) -> None:
    server, port = private_redis
    common = msgspec.structs.replace(
        world.common, redis_url=f"redis://127.0.0.1:{port}/0", keys_url=DEAD, billing_url=DEAD
    )
    r = aioredis.Redis.from_url(common.redis_url)
    # What keys and billing would have written: the catalog, a key with an RPM limit of 1, a small wallet.
    await r.set(world.res.keys.catalog(), await world.redis.get(world.res.keys.catalog()))
    secret, snap = await world.add_key(rpm_limit=1, balance=None)
    await r.set(world.res.keys.api_key(snap.key_hash), await world.redis.get(world.res.keys.api_key(snap.key_hash)))
    await SpendGuard(r, world.res.keys).set_balance(snap.account_id, 60)  # 60 micro-USD
    async with gateway_on(common) as gateway:
        first = await chat(gateway, secret)
        assert first.status_code == 200
        assert (await chat(gateway, secret)).status_code == 429  # the RPM limit works while Redis is up
        await r.aclose()
        server.stop()

        # Redis is gone: the process is alive, says so on /readyz, and the cached key still works ...
        assert (await gateway.get("/healthz")).status_code == 200
        ready = await gateway.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["redis"].startswith("error")
        codes = [(await chat(gateway, secret)).status_code for _ in range(8)]
        # ... past its RPM limit (limits fail open), until the last known balance is spent (the guard holds)
        assert codes[0] == 200 and codes.count(200) >= 2, codes
        assert codes[-1] == 402, codes
        # an unknown key cannot be checked anywhere (keys is not running here): refused, not let through
        assert (
            await gateway.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES},
                headers={"authorization": "Bearer fg-unknown"},
            )
        ).status_code == 401
