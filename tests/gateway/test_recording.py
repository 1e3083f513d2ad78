"""Settling and recording after the answer (relay.record_soon): batched and off the next request's way, yet a
client that sends one request after another always finds the previous one settled, and a request with no
successor is still settled and recorded."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.gateway.conftest import World, eventually, usage_events

CHAT = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


async def test_one_request_after_another_on_a_one_at_a_time_key_is_never_refused(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    # Each request's concurrency slot is given back by its settle, sent ahead of the next admission on the same
    # Redis connection; were it left to the timer, the next request would find the slot taken (429).
    secret, _ = await world.add_key(concurrency_limit=1)
    codes = []
    for _ in range(25):
        r = await gateway.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"})
        codes.append(r.status_code)
    assert codes == [200] * 25, [r.text]


async def test_a_last_request_is_settled_and_recorded_without_a_next_one(
        world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, snap = await world.add_key()
    r = await gateway.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text

    async def settled() -> bool:
        w = await world.wallet(snap.account_id)
        return w.get("reserved") == 0 and w.get("pending", 0) > 0

    await eventually(settled, seconds=5)
    events = await usage_events(world.res, {r.headers["x-request-id"]})
    assert len(events) == 1 and events[0].status == 200 and events[0].prompt_tokens > 0
    # The latency is the request's own, not the wait before it was recorded.
    assert 0 <= events[0].latency_ms < 5_000
