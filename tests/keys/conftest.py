"""Fixtures for the keys service: the app on a real Postgres/Redis/NATS, logged-in clients, an event tap."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.keys.app import create_app
from services.keys.config import KeysSettings
from shared import events as ev
from shared.config import CommonSettings

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

    async def wait_for(self, pred: Callable[[ev.AnyEvent], bool], timeout: float = 5.0) -> ev.AnyEvent:
        deadline = asyncio.get_running_loop().time() + timeout
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
