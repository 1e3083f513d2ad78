"""Fixtures for the notifier's tests: a real SMTP server, a real webhook receiver, the notifier in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from services.notifier.app import create_app
from shared.config import CommonSettings
from tests.notifier.receivers import Receiver, SmtpServer, settings_for


@pytest.fixture(autouse=True)
async def no_leftovers(common: CommonSettings) -> AsyncIterator[None]:
    """Notifications a test left pending (a server kept down on purpose) must not be sent to the next test's
    servers: cancel them when the test ends."""
    yield
    conn = await asyncpg.connect(common.database_url)
    try:
        await conn.execute("UPDATE notifier.outbox SET status = 'cancelled' WHERE status = 'pending'")
    finally:
        await conn.close()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.up()
    try:
        yield server
    finally:
        server.release()
        server.down()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.up()
    try:
        yield r
    finally:
        r.down()


@pytest.fixture
def notifier_app(common: CommonSettings, smtp: SmtpServer) -> Callable[..., Any]:
    """`async with notifier_app(**settings) as client:` runs the notifier (consumers, senders) in-process."""

    def make(**kw: Any) -> AsyncTestClient[Any]:
        return AsyncTestClient(app=create_app(settings_for(smtp, **kw), common))

    return make
