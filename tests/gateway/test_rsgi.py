"""The gateway as `faregate gateway` serves it: on granian's RSGI interface (services/gateway/front.py's
`RsgiIncoming`, shared/rsgi.py's bridge to Litestar for every other route and its lifespan). The in-process
tests drive the ASGI side of the same handlers; these drive the RSGI side over real connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai

from tests import procs
from tests.gateway.conftest import World, channel, usage_events, usage_events_of_key, use_catalog

MESSAGES: list[Any] = [{"role": "user", "content": "Say something."}]
LIMIT = 16 * 1024 * 1024  # GatewaySettings.max_body_bytes


def test_the_process_serves_rsgi(gateways: list[procs.ServiceProcess]) -> None:
    assert "worker(s), rsgi)" in gateways[0].log()


async def test_litestar_routes_answer_through_the_bridge(gateways: list[procs.ServiceProcess]) -> None:
    async with httpx.AsyncClient(base_url=gateways[0].url) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.headers["x-request-id"]
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "faregate_gateway_requests_total" in metrics.text
        models = await client.get("/v1/models", headers={"authorization": "Bearer fg-not-a-key"})
        assert models.status_code == 401 and models.json()["error"]["code"] == "invalid_api_key"
        missing = await client.get("/no/such/path")
        assert missing.status_code == 404


async def test_paid_paths_refuse_bad_requests_in_the_callers_format(gateways: list[procs.ServiceProcess]) -> None:
    async with httpx.AsyncClient(base_url=gateways[0].url, timeout=30) as client:
        wrong_method = await client.get("/v1/messages")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert wrong_method.json()["type"] == "error"  # Anthropic's error shape
        # Refused from the declared length, before the body is read (httpx will not send a short body).
        host, port = "127.0.0.1", gateways[0].port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {LIMIT + 1}\r\n\r\n{{}}".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 413")

        async def endless() -> AsyncIterator[bytes]:  # chunked, no Content-Length: counted as it comes
            piece = b" " * (1024 * 1024)
            for _ in range(LIMIT // len(piece) + 2):
                yield piece

        chunked = await client.post("/v1/chat/completions", content=endless())
        assert chunked.status_code == 413


async def test_a_chunked_request_is_relayed_and_recorded(world: World, gateways: list[procs.ServiceProcess]) -> None:
    await use_catalog(world, gateways, [channel(world.mock, "rsgi", secret=world.common.secret_key)])
    secret, _ = await world.add_key()
    body = httpx.Request("POST", "/", json={"model": "gpt-4o-mini", "messages": MESSAGES}).content

    async def pieces() -> AsyncIterator[bytes]:
        yield body[:10]
        yield body[10:]

    async with httpx.AsyncClient(base_url=gateways[1].url, timeout=30) as client:
        r = await client.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {secret}", "x-client-request-id": "mine-12345678"},
            content=pieces(),
        )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert r.headers["x-client-request-id"] == "mine-12345678"
    [event] = await usage_events(world.res, {r.headers["x-request-id"]})
    assert event.status == 200 and event.completion_tokens > 0


async def test_a_stream_that_arrives_in_one_write_is_relayed_whole(
    world: World, gateways: list[procs.ServiceProcess]
) -> None:
    await use_catalog(
        world, gateways, [channel(world.mock, "burst", fault="burst=1;cached=2", secret=world.common.secret_key)]
    )
    secret, snap = await world.add_key()
    client = openai.AsyncOpenAI(api_key=secret, base_url=gateways[0].url + "/v1", max_retries=0)
    chunks = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    pieces = [c async for c in chunks]
    text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert len(text) > 20 and pieces[-1].usage is not None
    [event] = await usage_events_of_key(world.res, snap.key_id)
    assert event.status == 200 and event.cached_tokens == 2
    assert event.completion_tokens == pieces[-1].usage.completion_tokens
