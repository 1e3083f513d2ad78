"""Fixtures for the keys service: the app on a real Postgres/Redis/NATS, logged-in clients, an event tap."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.keys.app import create_app
from services.keys.catalog_admin import DEFAULT_FILE as DEFAULT_CATALOG
from services.keys.config import KeysSettings
from services.keys.context import Ctx
from shared import events as ev
from shared.config import CommonSettings
from shared.runtime import Resources

PASSWORD = "correct horse battery"


@pytest.fixture
def keys_settings() -> KeysSettings:
    # Fast scans are driven by the tests themselves; throttling limits small enough to reach.
    return KeysSettings(expiry_scan_interval_s=3600, login_max_failures_per_account=3,
                        login_max_failures_per_address=6, admin_email="root@example.com",
                        admin_password="root-password-123")


@pytest.fixture
def app(keys_settings: KeysSettings, common: CommonSettings) -> Litestar:
    return create_app(keys_settings, common)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as c:
        yield c


@dataclass
class Tap:
    """Every event published under the test namespace, as it arrives (core NATS subscription)."""

    events: list[ev.AnyEvent] = field(default_factory=list)

    def of(self, kind: type[ev.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, pred: Callable[[ev.AnyEvent], bool], within_s: float = 5.0) -> ev.AnyEvent:
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            for e in self.events:
                if pred(e):
                    return e
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no matching event among {[type(e).__name__ for e in self.events]}")
            await asyncio.sleep(0.02)


@pytest.fixture
async def tap(common: CommonSettings) -> AsyncIterator[Tap]:
    t = Tap()
    nc = await nats.connect(common.nats_url)

    async def on(msg: Any) -> None:
        with contextlib.suppress(Exception):
            t.events.append(ev.decode(msg.data))

    await nc.subscribe(f"{common.namespace}.>", cb=on)
    await nc.flush()
    try:
        yield t
    finally:
        await nc.close()


@dataclass
class User:
    """One logged-in person. Cookies are sent explicitly per request (not from the shared client's jar), so
    one test client can act as several people at once."""

    client: AsyncTestClient[Litestar]
    email: str
    session: str
    csrf: str
    account_id: str
    api_key: str = ""  # the default key's secret, for accounts made by registering
    key_id: str = ""

    def headers(self, csrf: bool = True) -> dict[str, str]:
        h = {"Cookie": f"fg_session={self.session}; csrf={self.csrf}"}
        if csrf:
            h["X-CSRF-Token"] = self.csrf
        return h

    async def request(self, method: str, url: str, **kw: Any) -> Any:
        headers = {**self.headers(), **kw.pop("headers", {})}
        return await self.client.request(method, url, headers=headers, **kw)

    async def get(self, url: str, **kw: Any) -> Any:
        return await self.request("GET", url, **kw)

    async def post(self, url: str, **kw: Any) -> Any:
        return await self.request("POST", url, **kw)

    async def patch(self, url: str, **kw: Any) -> Any:
        return await self.request("PATCH", url, **kw)

    async def put(self, url: str, **kw: Any) -> Any:
        return await self.request("PUT", url, **kw)

    async def delete(self, url: str, **kw: Any) -> Any:
        return await self.request("DELETE", url, **kw)


def unique_email(stem: str = "user") -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}@example.com"


async def register(client: AsyncTestClient[Litestar], email: str | None = None,
                   password: str = PASSWORD) -> User:
    email = email or unique_email()
    r = await client.post("/api/auth/register", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    body = r.json()
    user = User(client=client, email=email, session=r.cookies["fg_session"], csrf=body["csrf_token"],
                account_id=body["account"]["id"], api_key=body["api_key"], key_id=body["key_id"])
    client.cookies.clear()
    return user


async def login(client: AsyncTestClient[Litestar], email: str, password: str = PASSWORD) -> User:
    r = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    user = User(client=client, email=email, session=r.cookies["fg_session"], csrf=body["csrf_token"],
                account_id=body["account"]["id"])
    client.cookies.clear()
    return user


@pytest.fixture
async def admin(client: AsyncTestClient[Litestar], keys_settings: KeysSettings) -> User:
    """The first admin, created at start-up from the configuration."""
    return await login(client, keys_settings.admin_email, keys_settings.admin_password)


@pytest.fixture
async def catalog_loaded(admin: User) -> dict[str, Any]:
    """The default catalog, imported through the admin API."""
    raw = DEFAULT_CATALOG.read_bytes()
    r = await admin.post("/api/admin/catalog/import", content=raw,
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture
def ctx(keys_settings: KeysSettings, resources: Resources) -> Ctx:
    """The keys domain on the test's own event loop (the app under AsyncTestClient runs on another one)."""
    return Ctx.from_resources(keys_settings, resources)


@pytest.fixture(autouse=True)
async def fresh_login_counters(common: CommonSettings) -> AsyncIterator[None]:
    """Every test client shares one address, so failed-login counters would leak from test to test."""
    r = aioredis.Redis.from_url(common.redis_url)
    try:
        async for key in r.scan_iter(f"{common.namespace}:login:fail:*"):
            await r.delete(key)
        yield
    finally:
        await r.aclose()
