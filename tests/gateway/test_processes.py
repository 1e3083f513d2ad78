"""Real gateway processes (`faregate gateway` on granian) against the mock upstream: a client that hangs up
cancels the upstream at once, and limits hold across two gateways sharing Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx

from tests import procs
from tests.gateway.conftest import World, channel, eventually, usage_events, usage_events_of_key, use_catalog

MESSAGES: list[Any] = [{"role": "user", "content": "Count slowly to fifty."}]


def auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def test_client_disconnect_cancels_the_upstream_and_records_what_was_generated(
    world: World, gateways: list[procs.ServiceProcess]
) -> None:
    await use_catalog(
        world,
        gateways,
        [
            channel(
                world.mock,
                "slow-stream",
                fault="delay_chunk_ms=200;chunks=40",
                secret=world.common.secret_key,
            )
        ],
    )
    secret, snap = await world.add_key()
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST",
            f"{gateways[0].url}/v1/chat/completions",
            headers=auth(secret),
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        ) as r:
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            got = 0
            async for _ in r.aiter_raw():
                got += 1
                if got >= 3:
                    break
        hung_up = time.monotonic()

    def upstream_outcome() -> str:
        return str(next(e["outcome"] for e in world.mock_stats()["requests"] if e["request_id"] == rid))

    async def cancelled() -> bool:
        return upstream_outcome() == "cancelled"

    await eventually(cancelled, 5)
    assert time.monotonic() - hung_up < 2.0  # "at once": well before the 8 s the stream would have taken
    [event] = await usage_events(world.res, {rid})
    assert event.status == 499 and event.error_code == "client_disconnected"
    assert 0 < event.completion_tokens < 200 and event.prompt_tokens > 0

    async def settled() -> bool:
        w = await world.wallet(snap.account_id)
        return w.get("reserved") == 0 and w.get("pending", 0) > 0

    await eventually(settled)


async def test_101st_concurrent_request_on_a_default_key_is_429(
    world: World, gateways: list[procs.ServiceProcess]
) -> None:
    await use_catalog(
        world,
        gateways,
        [channel(world.mock, "slow-start", fault="delay_first_ms=2500", secret=world.common.secret_key)],
    )
    secret, snap = await world.add_key()
    assert snap.concurrency_limit == 100
    payload = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        first = [
            asyncio.create_task(
                client.post(f"{gateways[i % 2].url}/v1/chat/completions", json=payload, headers=auth(secret))
            )
            for i in range(100)
        ]
        inflight = world.res.keys.rate("key", snap.key_id, "inflight")

        async def all_in() -> bool:
            return bool(await world.redis.zcard(inflight) == 100)

        await eventually(all_in, 10)
        extra = await client.post(f"{gateways[0].url}/v1/chat/completions", json=payload, headers=auth(secret))
        assert extra.status_code == 429
        assert extra.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in extra.headers
        assert "concurrent" in extra.json()["error"]["message"]
        done = await asyncio.gather(*first)
    assert [r.status_code for r in done] == [200] * 100
    # Every request's slot given back; what stays are the workers' lease slots (services/gateway/leases.py), at
    # most half the limit in all.
    members = [m.decode() for m in await world.redis.zrange(inflight, 0, -1)]
    leased = [m for m in members if f":{snap.key_id}:" in m]
    assert members == leased and len(leased) <= snap.concurrency_limit // 2


async def test_rpm_holds_across_two_gateways(world: World, gateways: list[procs.ServiceProcess]) -> None:
    await use_catalog(world, gateways, [channel(world.mock, "main", secret=world.common.secret_key)])
    secret, _ = await world.add_key(rpm_limit=5)
    payload = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}
    if time.time() % 60 > 50:  # a fixed one-minute window: do not straddle its edge
        await asyncio.sleep(61 - time.time() % 60)
    async with httpx.AsyncClient(timeout=30) as client:
        results = [
            await client.post(f"{gateways[i % 2].url}/v1/chat/completions", json=payload, headers=auth(secret))
            for i in range(8)
        ]
    codes = [r.status_code for r in results]
    assert codes == [200] * 5 + [429] * 3
    assert results[0].headers["x-ratelimit-limit-requests"] == "5"
    assert [r.headers["x-ratelimit-remaining-requests"] for r in results[:5]] == ["4", "3", "2", "1", "0"]
    assert int(results[5].headers["retry-after"]) >= 1
    assert results[5].headers["x-ratelimit-remaining-requests"] == "0"


async def test_tpm_holds_across_two_gateways(world: World, gateways: list[procs.ServiceProcess]) -> None:
    await use_catalog(world, gateways, [channel(world.mock, "main", secret=world.common.secret_key)])
    secret, _ = await world.add_key(tpm_limit=300)
    payload = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 30}
    if time.time() % 60 > 45:
        await asyncio.sleep(61 - time.time() % 60)
    served: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(20):
            r = await client.post(f"{gateways[i % 2].url}/v1/chat/completions", json=payload, headers=auth(secret))
            if r.status_code == 429:
                assert "tokens per minute" in r.json()["error"]["message"]
                break
            assert r.status_code == 200
            served.append(r.json()["usage"]["total_tokens"])
            await asyncio.sleep(0.2)  # let the finished request correct the window to its real token count
        else:
            raise AssertionError("the TPM limit never refused a request")
    assert len(served) >= 2  # both gateways served before the shared window filled
    assert sum(served[:-1]) < 300 <= sum(served)  # refused exactly once the real counts filled the window


async def test_client_leaving_before_the_answer_cancels_the_upstream(
    world: World, gateways: list[procs.ServiceProcess]
) -> None:
    await use_catalog(
        world,
        gateways,
        [channel(world.mock, "thinking", fault="delay_first_ms=4000", secret=world.common.secret_key)],
    )
    secret, snap = await world.add_key()
    rid = "leaver-" + str(time.time_ns())
    async with httpx.AsyncClient(timeout=0.8) as client:
        try:
            await client.post(
                f"{gateways[1].url}/v1/chat/completions",
                headers={**auth(secret), "x-request-id": rid},
                json={"model": "gpt-4o-mini", "messages": MESSAGES},
            )
        except httpx.ReadTimeout:
            pass
        else:
            raise AssertionError("the mock answered before the client gave up")

    [event] = await usage_events_of_key(world.res, snap.key_id, wait_s=2.5)
    assert event.status == 499 and event.error_code == "client_disconnected"
    assert event.request_id != rid  # the request's own id, which the gateway also sent upstream

    async def cancelled() -> bool:
        entries = [e for e in world.mock_stats()["requests"] if e["request_id"] == event.request_id]
        return bool(entries) and entries[0]["outcome"] == "cancelled"

    await eventually(cancelled, 1.0)  # well before the 4 s the upstream would have taken

    async def released() -> bool:
        w = await world.wallet(snap.account_id)
        return w.get("reserved") == 0

    await eventually(released)


async def test_sigterm_lets_an_in_flight_stream_finish_and_record(world: World) -> None:
    dead = f"http://127.0.0.1:{procs.free_port()}"
    gw = procs.start("gateway", {"FAREGATE_KEYS_URL": dead, "FAREGATE_BILLING_URL": dead}, ready_path="/readyz")
    try:
        await use_catalog(
            world,
            [gw],
            [
                channel(
                    world.mock,
                    "steady-drip",
                    fault="delay_chunk_ms=100;chunks=15",
                    secret=world.common.secret_key,
                )
            ],
        )
        secret, _ = await world.add_key()
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream(
                "POST",
                f"{gw.url}/v1/chat/completions",
                headers=auth(secret),
                json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
            ) as r:
                rid = r.headers["x-request-id"]
                body = b""
                async for piece in r.aiter_raw():
                    if not body:
                        gw.proc.send_signal(signal.SIGTERM)  # the deploy rolls while the answer is streaming
                    body += piece
        assert body.rstrip().endswith(b"data: [DONE]")
        [event] = await usage_events(world.res, {rid})
        assert event.status == 200 and event.completion_tokens > 0
        assert gw.proc.wait(timeout=30) == 0
    finally:
        gw.stop()
