"""The paid chat path, driven by the official OpenAI SDK: a client calls, the mock upstream answers, the
wallet's reservation is settled to the exact priced cost, and exactly one usage.recorded is published."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from litestar.testing import AsyncTestClient

from shared.pricing import cost_micros
from tests.gateway.conftest import MOCK_KEY, PRICE, World, eventually, sdk, usage_events

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the relay."},
]


async def test_non_stream_completion_is_forwarded_priced_and_recorded(
    world: World,
    gateway: AsyncTestClient[Any],
) -> None:
    secret, snap = await world.add_key()
    client = sdk(gateway, secret)
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    reply = raw.parse()
    rid = raw.headers["x-request-id"]
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    [event] = await usage_events(world.res, {rid})
    assert event.event_id == rid and event.account_id == snap.account_id and event.key_id == snap.key_id
    assert (event.prompt_tokens, event.completion_tokens) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert event.status == 200 and event.channel_id == "main" and event.model == "gpt-4o-mini"
    assert event.price == PRICE and event.stream is False and event.reserved_micros > 0

    expected = cost_micros(
        PRICE,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        cached_tokens=event.cached_tokens,
    )

    async def settled() -> bool:
        w = await world.wallet(snap.account_id)
        return w.get("reserved") == 0 and w.get("pending") == expected

    await eventually(settled)
    # the upstream got our channel's key, never the client's
    sent = [r for r in world.mock_stats()["requests"] if r["request_id"] == rid]
    assert sent and sent[0]["api_key"] == MOCK_KEY


async def test_stream_forwards_chunks_and_strips_usage_the_client_did_not_ask_for(
    world: World, gateway: AsyncTestClient[Any]
) -> None:
    secret, _ = await world.add_key()
    client = sdk(gateway, secret)
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    rid = raw.headers["x-request-id"]
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks), "the usage-only chunk must not reach a client that did not ask"

    [event] = await usage_events(world.res, {rid})
    assert event.stream is True and event.completion_tokens > 0 and event.prompt_tokens > 0
    # the upstream was asked for usage even though the client was not
    sent = next(r for r in world.mock_stats()["requests"] if r["request_id"] == rid)
    assert sent["body"]["stream_options"] == {"include_usage": True}


async def test_stream_with_include_usage_gets_the_usage_chunk(world: World, gateway: AsyncTestClient[Any]) -> None:
    secret, _ = await world.add_key()
    client = sdk(gateway, secret)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_model_map_rewrites_only_the_model(world: World, gateway: AsyncTestClient[Any]) -> None:
    from tests.gateway.conftest import channel

    ch = channel(world.mock, "mapped", secret=world.common.secret_key)
    ch = type(ch)(**{**{f: getattr(ch, f) for f in ch.__struct_fields__}, "model_map": {"gpt-4o-mini": "gpt-4.1"}})
    await world.set_catalog([ch])
    await eventually(lambda: _catalog_has(gateway, "mapped"))
    secret, _ = await world.add_key()
    raw = await sdk(gateway, secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0.25, max_tokens=7
    )
    rid = raw.headers["x-request-id"]
    sent = next(r for r in world.mock_stats()["requests"] if r["request_id"] == rid)
    assert sent["body"]["model"] == "gpt-4.1"
    assert sent["body"]["temperature"] == 0.25 and sent["body"]["max_tokens"] == 7
    assert sent["body"]["messages"] == MESSAGES


async def _catalog_has(gateway: AsyncTestClient[Any], channel_id: str) -> bool:
    gw = gateway.app.state.gw
    return channel_id in gw.catalog.channels


async def test_a_client_request_id_is_echoed_but_every_request_gets_its_own_id(
    world: World, gateway: AsyncTestClient[Any]
) -> None:
    """The request id names the usage event, which billing debits once: a client repeating its own X-Request-Id
    must not make later requests duplicates of the first (free). Its id comes back as X-Client-Request-Id."""
    secret, _ = await world.add_key()
    mine = "client-req-12345678"
    answers = [
        await gateway.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {secret}", "x-request-id": mine},
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
        )
        for _ in range(2)
    ]
    assert [r.status_code for r in answers] == [200, 200]
    assert [r.headers["x-client-request-id"] for r in answers] == [mine, mine]
    rids = {r.headers["x-request-id"] for r in answers}
    assert len(rids) == 2 and mine not in rids
    events = await usage_events(world.res, rids)
    assert sorted(e.event_id for e in events) == sorted(rids)
    r = await gateway.post(
        "/v1/chat/completions",
        headers={"authorization": "Bearer nope", "x-request-id": "bad id with spaces"},
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
    )
    assert r.status_code == 401 and "x-client-request-id" not in r.headers


@pytest.mark.parametrize("stream", [False, True])
async def test_sdk_sees_tools_round_trip(world: World, gateway: AsyncTestClient[Any], stream: bool) -> None:
    secret, _ = await world.add_key()
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    client = sdk(gateway, secret)
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "tools": tools,
        "tool_choice": "required",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    if not stream:
        reply = await client.chat.completions.create(**kwargs)
        assert reply.choices[0].message.tool_calls
        assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    else:
        names = []
        async for chunk in await client.chat.completions.create(stream=True, **kwargs):
            for c in chunk.choices:
                for tc in c.delta.tool_calls or ():
                    if tc.function and tc.function.name:
                        names.append(tc.function.name)
        assert names == ["get_weather"]


async def test_unknown_key_is_refused_in_openai_shape(world: World, gateway: AsyncTestClient[Any]) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        await sdk(gateway, "fg-not-a-key").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
