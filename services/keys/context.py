"""What the keys service's domain functions work with: its settings and the open resources."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from services.keys.config import KeysSettings
from shared import bus, cache
from shared.config import CommonSettings
from shared.runtime import Resources


@dataclass(frozen=True)
class Ctx:
    settings: KeysSettings
    common: CommonSettings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    publisher: bus.Publisher
    keys: cache.Keys

    @classmethod
    def from_resources(cls, settings: KeysSettings, res: Resources) -> Ctx:
        assert res.pool is not None and res.redis is not None and res.publisher is not None
        return cls(settings=settings, common=res.common, pool=res.pool, redis=res.redis,
                   publisher=res.publisher, keys=res.keys)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a logged-in person (session cookie)."""

    account_id: str
    email: str
    role: str
    session_hash: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
