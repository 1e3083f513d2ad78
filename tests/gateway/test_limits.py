"""Limits per account (gateway settings), shared by all of an account's keys; per-key limits are exercised
across two gateway processes in test_processes.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.gateway.config import GatewaySettings
from tests.gateway.conftest import World, settings

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return settings(account_rpm_limit=3)


async def test_an_account_limit_holds_across_its_keys(world: World, gateway: AsyncTestClient[Any]) -> None:
    first, snap = await world.add_key()
    second, _ = await world.add_key(account_id=snap.account_id, balance=None)
    other, _ = await world.add_key()  # another account is not affected
    if time.time() % 60 > 55:  # a fixed one-minute window: do not straddle its edge
        await asyncio.sleep(61 - time.time() % 60)
    codes = []
    for secret in (first, second, first, second):
        r = await gateway.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"authorization": f"Bearer {secret}"},
        )
        codes.append(r.status_code)
    assert codes == [200, 200, 200, 429]
    assert "on this account" in r.json()["error"]["message"] and "retry-after" in r.headers
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"authorization": f"Bearer {other}"},
    )
    assert r.status_code == 200
