"""The other OpenAI endpoints (embeddings, images, models) and usage counted with the tokenizer when an
upstream reports none."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from litestar.testing import AsyncTestClient

from shared import catalog as cat
from shared.events import ModelPrice
from shared.pricing import cost_micros
from tests.gateway.conftest import World, channel, eventually, model, sdk, usage_events

EMBED_PRICE = ModelPrice(input=20_000, output=0)


async def catalog_with_everything(world: World, gateway: AsyncTestClient[Any]) -> None:
    ch = channel(
        world.mock,
        "all",
        models=("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "dall-e-3", "gpt-image-1"),
        secret=world.common.secret_key,
    )
    await world.set_catalog(
        [ch],
        [
            model(),
            model("gpt-4o"),
            model("text-embedding-3-small", kind="embedding", price=EMBED_PRICE),
            cat.Model(
                name="dall-e-3",
                provider="openai",
                kind="image",
                price=ModelPrice(input=0, output=0),
                image_price_micros=40_000,
            ),
            model("gpt-image-1", kind="image"),
        ],
        groups=(cat.Group(name="mini-only", models=("gpt-4o-mini", "text-embedding-3-small")),),
    )

    async def loaded() -> bool:
        return "dall-e-3" in gateway.app.state.gw.catalog.models

    await eventually(loaded)


async def test_embeddings_are_relayed_and_priced(world: World, gateway: AsyncTestClient[Any]) -> None:
    await catalog_with_everything(world, gateway)
    secret, _ = await world.add_key()
    raw = await sdk(gateway, secret).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["the quick brown fox", "jumps"]
    )
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 10
    [event] = await usage_events(world.res, {raw.headers["x-request-id"]})
    assert event.endpoint == "embeddings" and event.prompt_tokens == result.usage.prompt_tokens > 0
    assert event.completion_tokens == 0 and event.price == EMBED_PRICE


async def test_images_are_priced_per_image(world: World, gateway: AsyncTestClient[Any]) -> None:
    await catalog_with_everything(world, gateway)
    secret, snap = await world.add_key()
    raw = await sdk(gateway, secret).images.with_raw_response.generate(model="dall-e-3", prompt="a lighthouse", n=3)
    assert len(raw.parse().data or []) == 3
    [event] = await usage_events(world.res, {raw.headers["x-request-id"]})
    assert event.endpoint == "images" and event.price is not None
    assert (
        cost_micros(
            event.price,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            cached_tokens=event.cached_tokens,
        )
        == 3 * 40_000
    )

    async def settled() -> bool:
        return (await world.wallet(snap.account_id)).get("pending") == 120_000

    await eventually(settled)


async def test_token_priced_images_use_the_reported_tokens(world: World, gateway: AsyncTestClient[Any]) -> None:
    await catalog_with_everything(world, gateway)
    secret, _ = await world.add_key()
    raw = await sdk(gateway, secret).images.with_raw_response.generate(model="gpt-image-1", prompt="a boat", n=2)
    [event] = await usage_events(world.res, {raw.headers["x-request-id"]})
    assert event.completion_tokens == 2 * 272 and event.prompt_tokens > 0


async def test_models_lists_only_what_the_key_may_use(world: World, gateway: AsyncTestClient[Any]) -> None:
    await catalog_with_everything(world, gateway)
    everything, _ = await world.add_key()
    limited, _ = await world.add_key(group="mini-only")
    listed_key, _ = await world.add_key(models=("gpt-4o",))
    names = {m.id async for m in sdk(gateway, everything).models.list()}
    assert names == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "dall-e-3", "gpt-image-1"}
    assert {m.id async for m in sdk(gateway, limited).models.list()} == {
        "gpt-4o-mini",
        "text-embedding-3-small",
    }
    assert {m.id async for m in sdk(gateway, listed_key).models.list()} == {"gpt-4o"}
    one = await sdk(gateway, limited).models.retrieve("gpt-4o-mini")
    assert one.id == "gpt-4o-mini" and one.owned_by == "openai"
    with pytest.raises(openai.NotFoundError):
        await sdk(gateway, limited).models.retrieve("gpt-4o")
    with pytest.raises(openai.AuthenticationError):
        await sdk(gateway, "fg-nobody").models.list()


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_is_counted_with_the_tokenizer_when_the_upstream_reports_none(
    world: World, gateway: AsyncTestClient[Any], stream: bool
) -> None:
    from services.gateway import tokenizer

    await world.set_catalog([channel(world.mock, "mute", fault="no_usage=1", secret=world.common.secret_key)])

    async def loaded() -> bool:
        return "mute" in gateway.app.state.gw.catalog.channels

    await eventually(loaded)
    secret, _ = await world.add_key()
    messages: list[Any] = [{"role": "user", "content": "Describe the sea in a few words."}]
    raw = await sdk(gateway, secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=stream
    )
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        reply = raw.parse()
        assert reply.usage is None
        text = reply.choices[0].message.content or ""
    [event] = await usage_events(world.res, {raw.headers["x-request-id"]})
    assert event.completion_tokens == tokenizer.count_text(text) > 0
    assert event.prompt_tokens == tokenizer.count_chat_prompt(messages)
