"""The resources a service process holds (Postgres pool, Redis, NATS, publisher), opened and closed in one place.

A service's lifespan does `async with open_resources(common, "billing") as res:` and hands `res` to its app and
consumers. Start-up waits for dependencies (with a bounded retry) instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared import bus, cache
from shared.config import CommonSettings

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("faregate.runtime")

T = TypeVar("T")


@dataclass
class Resources:
    common: CommonSettings
    service: str
    pool: asyncpg.Pool | None = None
    redis: aioredis.Redis | None = None
    nc: NATS | None = None
    js: JetStreamContext | None = None
    publisher: bus.Publisher | None = None
    keys: cache.Keys = field(init=False)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = cache.Keys(self.common.namespace)

    def ready_checks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        checks: dict[str, Callable[[], Awaitable[None]]] = {}
        if self.pool is not None:
            pool = self.pool

            async def postgres() -> None:
                async with pool.acquire(timeout=2) as conn:
                    await conn.fetchval("SELECT 1")

            checks["postgres"] = postgres
        if self.redis is not None:
            r = self.redis

            async def redis_() -> None:
                await r.ping()

            checks["redis"] = redis_
        if self.nc is not None:
            nc = self.nc

            async def nats_() -> None:
                if not nc.is_connected:
                    raise ConnectionError("NATS not connected")

            checks["nats"] = nats_
        return checks

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run a background loop (a consumer, a scan) that stops with the service."""

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task crashed", extra={"task": name})

        self.tasks.append(asyncio.create_task(guarded(), name=name))


async def retry(what: str, make: Callable[[], Awaitable[T]], seconds: float = 60.0) -> T:
    """Wait for a dependency at start-up rather than crash-loop; give up after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    delay = 0.2
    while True:
        try:
            return await make()
        except Exception as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("waiting for dependency", extra={"dependency": what, "error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)


@contextlib.asynccontextmanager
async def open_resources(
    common: CommonSettings,
    service: str,
    *,
    use_db: bool = True,
    use_redis: bool = True,
    use_nats: bool = True,
    pool_size: int = 10,
) -> AsyncIterator[Resources]:
    res = Resources(common=common, service=service)
    try:
        if use_db:
            from shared import db  # imported here: the gateway (use_db=False) is spared asyncpg (~5 MB)

            res.pool = await retry(
                "postgres", lambda: db.create_pool(common.database_url, max_size=pool_size)
            )
        if use_redis:
            res.redis = cache.client(common.redis_url)
            await retry("redis", res.redis.ping)
        if use_nats:
            res.nc = await retry("nats", lambda: bus.connect(common.nats_url, name=f"faregate-{service}"))
            js = res.js = res.nc.jetstream()
            await retry("jetstream", lambda: bus.ensure_streams(js, common.namespace, common.stream_replicas))
            res.publisher = bus.Publisher(res.js, common.namespace, Path(common.data_dir) / "spool" / service)
            res.publisher.start()
        yield res
    finally:
        res.stop.set()
        for task in res.tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)
        if res.publisher is not None:
            await res.publisher.close()
        if res.nc is not None:
            with contextlib.suppress(Exception):
                await res.nc.drain()
        if res.redis is not None:
            await res.redis.aclose()
        if res.pool is not None:
            await res.pool.close()
