"""Routing and resilience: failures before the first byte move to the next channel (then the fallback model),
failures after it end the stream with an error event, and a failing channel is taken out of rotation by the
shared circuit breaker and probed back in."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import openai
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.config import GatewaySettings
from shared import events as ev
from tests.gateway.conftest import World, channel, eventually, model, sdk, settings, usage_events

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me something."}]


async def use(
    world: World,
    gateway: AsyncTestClient[Any],
    channels: list[Any],
    models: list[Any] | None = None,
) -> None:
    await world.set_catalog(channels, models)
    ids = {c.id for c in channels}

    async def loaded() -> bool:
        return set(gateway.app.state.gw.catalog.channels) == ids

    await eventually(loaded)


def ch(world: World, cid: str, **kw: Any) -> Any:
    return channel(world.mock, cid, secret=world.common.secret_key, **kw)


def attempts_by_model(world: World, rid: str) -> list[str]:
    """What the mock received for one request, as `model@fault` (the mock strips the fault from the model)."""
    return [
        r["model"] + (f"@{r['fault']}" if r["fault"] else "")
        for r in world.mock_stats()["requests"]
        if r["request_id"] == rid
    ]


def in_app(gateway: AsyncTestClient[Any], fn: Any, *args: Any) -> Any:
    """Run a coroutine function in the app's own loop (the test client runs the app in a portal thread)."""
    return gateway.blocking_portal.call(fn, *args)


@pytest.mark.parametrize("fault", ["fail500", "status=429;retry_after=1", "delay_first_ms=3000", "fail502"])
@pytest.mark.parametrize("stream", [False, True])
async def test_failure_before_first_byte_is_served_by_the_next_channel(
    world: World, gateway: AsyncTestClient[Any], fault: str, stream: bool
) -> None:
    await use(world, gateway, [ch(world, "bad", fault=fault, priority=10), ch(world, "good", priority=1)])
    secret, _ = await world.add_key()
    raw = await sdk(gateway, secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=stream
    )
    rid = raw.headers["x-request-id"]
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        text = raw.parse().choices[0].message.content or ""
    assert text
    assert attempts_by_model(world, rid) == [f"gpt-4o-mini@{fault}", "gpt-4o-mini"]  # bad first, once
    [event] = await usage_events(world.res, {rid})
    assert event.channel_id == "good" and event.status == 200 and event.completion_tokens > 0


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return settings(first_byte_timeout_s=1.0, breaker_min_requests=3, breaker_cooldown_s=1.0)


async def test_fallback_model_serves_when_every_channel_of_the_model_fails(
    world: World, gateway: AsyncTestClient[Any]
) -> None:
    await use(
        world,
        gateway,
        [
            ch(world, "a1", fault="fail500"),
            ch(world, "a2", fault="fail503"),
            ch(world, "b1", models=("gpt-4o",)),
        ],
        [model(fallbacks=("gpt-4o",)), model("gpt-4o")],
    )
    secret, _ = await world.add_key()
    raw = await sdk(gateway, secret).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    rid = raw.headers["x-request-id"]
    seen = attempts_by_model(world, rid)
    assert sorted(seen[:2]) == ["gpt-4o-mini@fail500", "gpt-4o-mini@fail503"] and seen[2:] == ["gpt-4o"]
    [event] = await usage_events(world.res, {rid})
    assert event.model == "gpt-4o" and event.channel_id == "b1"


async def test_attempts_are_bounded_and_never_repeat_a_channel(world: World, gateway: AsyncTestClient[Any]) -> None:
    channels = [ch(world, f"down{i}", fault="fail500") for i in range(6)]
    await use(world, gateway, channels)
    secret, _ = await world.add_key()
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 503
    tried = attempts_by_model(world, r.headers["x-request-id"])
    assert len(tried) == GatewaySettings().max_attempts  # 4 of the 6 channels, then give up


async def test_all_channels_rate_limited_is_429_with_retry_after(world: World, gateway: AsyncTestClient[Any]) -> None:
    await use(
        world,
        gateway,
        [
            ch(world, "busy1", fault="status=429;retry_after=7"),
            ch(world, "busy2", fault="status=429;retry_after=9"),
        ],
    )
    secret, _ = await world.add_key()
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    # Retry-After is honoured: the very next request does not knock on either channel again
    before = world.mock_stats()["total"]
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 503 and world.mock_stats()["total"] == before


async def test_mid_stream_disconnect_ends_with_an_error_event_and_is_still_recorded(
    world: World, gateway: AsyncTestClient[Any]
) -> None:
    await use(world, gateway, [ch(world, "flaky", fault="disconnect_after=4")])
    secret, _ = await world.add_key()
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 200  # the first byte had gone out: the status cannot change any more
    frames = [f for f in r.text.split("\n\n") if f.strip()]
    assert len(frames) >= 2
    last = msgspec.json.decode(frames[-1].removeprefix("data: "))
    assert last["error"]["code"] == "bad_upstream_response"
    assert "[DONE]" not in r.text
    with pytest.raises(openai.APIError):  # the SDK surfaces it as an error, not a silent short answer
        async for _ in await sdk(gateway, secret).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ):
            pass
    [event] = await usage_events(world.res, {r.headers["x-request-id"]})
    assert event.status == 502 and event.error_code == "bad_upstream_response"
    assert event.completion_tokens > 0  # what was generated before the break, counted with the tokenizer


async def test_breaker_opens_after_repeated_failures_and_probes_back(
    world: World, gateway: AsyncTestClient[Any]
) -> None:
    assert world.res.nc
    seen: list[ev.ChannelStateChanged] = []

    async def on_state(msg: Any) -> None:
        event = ev.decode(msg.data)
        if isinstance(event, ev.ChannelStateChanged) and event.channel_id == "wobbly":
            seen.append(event)

    sub = await world.res.nc.subscribe(f"{world.common.namespace}.channel.state_changed", cb=on_state)
    await use(world, gateway, [ch(world, "wobbly", fault="fail500", priority=5), ch(world, "steady")])
    secret, _ = await world.add_key()
    gw = gateway.app.state.gw
    headers = {"authorization": f"Bearer {secret}"}
    payload = {"model": "gpt-4o-mini", "messages": MESSAGES}

    # one stray error does not open it
    assert (await gateway.post("/v1/chat/completions", json=payload, headers=headers)).status_code == 200
    in_app(gateway, gw.breaker.refresh, ["wobbly"])
    assert gw.breaker.view["wobbly"].state == "closed"

    for _ in range(3):
        assert (await gateway.post("/v1/chat/completions", json=payload, headers=headers)).status_code == 200

    async def opened() -> bool:
        in_app(gateway, gw.breaker.refresh, ["wobbly"])
        return bool(gw.breaker.view["wobbly"].state == "open")

    await eventually(opened)
    r = await gateway.post("/v1/chat/completions", json=payload, headers=headers)
    assert r.status_code == 200
    assert attempts_by_model(world, r.headers["x-request-id"]) == ["gpt-4o-mini"]  # skipped while open

    r = await gateway.get("/internal/channels/health", headers={"x-internal-token": world.common.internal_token})
    row = next(c for c in r.json()["channels"] if c["channel_id"] == "wobbly")
    assert row["state"] == "open" and "failed" in row["reason"] and row["since_ms"] <= time.time() * 1000
    assert (await gateway.get("/internal/channels/health")).status_code == 401

    # after the cool-down one probe goes to it; it fails again, so it reopens with a longer cool-down
    await asyncio.sleep(1.1)
    assert (await gateway.post("/v1/chat/completions", json=payload, headers=headers)).status_code == 200
    await eventually(opened)
    states = [e.state for e in seen]
    await eventually(lambda: _true(len(seen) >= 3))
    states = [e.state for e in seen]
    assert states[:3] == ["open", "half_open", "open"]
    await sub.unsubscribe()


async def _true(value: bool) -> bool:
    return value


async def test_a_recovered_channel_is_closed_by_its_probe(world: World, gateway: AsyncTestClient[Any]) -> None:
    healing = ch(world, "healing", priority=5)
    await use(world, gateway, [healing, ch(world, "steady")])
    gw = gateway.app.state.gw
    for _ in range(3):
        in_app(gateway, gw.breaker._send, "healing", 0, 1, "test: upstream_500")
    in_app(gateway, gw.drain)
    in_app(gateway, gw.breaker.refresh, ["healing"])
    assert gw.breaker.view["healing"].state == "open"
    await asyncio.sleep(1.1)
    secret, _ = await world.add_key()
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 200
    in_app(gateway, gw.drain)

    async def closed() -> bool:
        in_app(gateway, gw.breaker.refresh, ["healing"])
        return bool(gw.breaker.view["healing"].state == "closed")

    await eventually(closed)


@pytest.mark.parametrize("fault", ["error_after=3", "garbage=1"])
async def test_an_error_or_garbage_inside_the_stream_becomes_our_own_error_event(
    world: World, gateway: AsyncTestClient[Any], fault: str
) -> None:
    await use(world, gateway, [ch(world, "noisy", fault=fault)])
    secret, _ = await world.add_key()
    r = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        headers={"authorization": f"Bearer {secret}"},
    )
    frames = [f for f in r.text.split("\n\n") if f.strip()]
    last = msgspec.json.decode(frames[-1].removeprefix("data: "))
    assert last["error"]["code"] == "bad_upstream_response"
    # the upstream's own error event (or junk) stays with the gateway: ours is the only error the client sees
    assert "mock" not in frames[-1].lower() and not any('"error"' in f for f in frames[:-1])
    [event] = await usage_events(world.res, {r.headers["x-request-id"]})
    assert event.status == 502 and event.error_code == "bad_upstream_response"


async def test_an_anthropic_upstream_error_event_reaches_an_openai_client_as_an_error(
    world: World, gateway: AsyncTestClient[Any]
) -> None:
    from shared import catalog as cat
    from shared import crypto
    from tests.gateway.conftest import MOCK_KEY

    claude = cat.Channel(
        id="claude",
        name="claude",
        provider="anthropic",
        base_url=world.mock.url,
        api_keys_enc=(crypto.seal(MOCK_KEY, world.common.secret_key),),
        models=("gpt-4o-mini",),
        model_map={"gpt-4o-mini": "claude-haiku-4-5@error_after=4"},
    )
    await use(world, gateway, [claude])
    secret, _ = await world.add_key()
    with pytest.raises(openai.APIError):
        async for _ in await sdk(gateway, secret).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ):
            pass
