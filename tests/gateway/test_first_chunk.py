"""A stream whose first event is the upstream's error: nothing has reached the client yet, so the gateway moves on
to the next channel (and counts the failure), or, when every channel fails so, answers a plain error in the
client's dialect instead of a 200 stream. Official SDKs as clients, the mock as every upstream
(`error_after=0` makes it answer 200 with the error as its very first event)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import anthropic as anthropic_sdk
import httpx
import openai as openai_sdk
import pytest
from google import genai
from google.genai import types

from services.gateway.attempts import AttemptFailed, _stream_head
from services.gateway.providers import anthropic as p_anthropic
from services.gateway.providers import gemini as p_gemini
from services.gateway.providers import openai as p_openai
from shared import catalog as cat
from shared import crypto
from tests import procs
from tests.gateway.conftest import MOCK_KEY, World, eventually, usage_events_of_key, use_catalog

MODEL = "gpt-4o-mini"
# channel provider -> the mock's model for it
UPSTREAM_MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
DIALECTS = list(UPSTREAM_MODEL)


def dialect_channel(world: World, cid: str, provider: str, *, fault: str = "", priority: int = 0) -> cat.Channel:
    upstream = UPSTREAM_MODEL[provider] + (f"@{fault}" if fault else "")
    return cat.Channel(
        id=cid,
        name=cid,
        provider=provider,
        base_url=f"{world.mock.url}/v1" if provider == "openai" else world.mock.url,
        api_keys_enc=(crypto.seal(MOCK_KEY, world.common.secret_key),),
        models=(MODEL,),
        model_map={MODEL: upstream},
        priority=priority,
    )


async def ask_streaming(base: str, dialect: str, key: str, rid: str) -> str:
    """Ask for a streamed answer with the dialect's own SDK; the text the client assembled.

    The async clients: the sync OpenAI one hangs up right after `[DONE]`, which the gateway may record as a
    client disconnect, a race beside the point here."""
    headers = {"x-request-id": rid}
    question = "Tell me about the harbour."
    if dialect == "openai":
        oc = openai_sdk.AsyncOpenAI(api_key=key, base_url=base + "/v1", max_retries=0, default_headers=headers)
        chunks = await oc.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    if dialect == "anthropic":
        ac = anthropic_sdk.AsyncAnthropic(api_key=key, base_url=base, max_retries=0, default_headers=headers)
        async with ac.messages.stream(
            model=MODEL, max_tokens=300, messages=[{"role": "user", "content": question}]
        ) as s:
            message = await s.get_final_message()
        return "".join(b.text for b in message.content if b.type == "text")
    gc = genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=base, headers=headers, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    parts = await gc.aio.models.generate_content_stream(model=MODEL, contents=question)
    return "".join([r.text or "" async for r in parts])


def status_of(exc: BaseException) -> int:
    """The HTTP status the SDK saw, whatever its error class calls it."""
    if isinstance(exc, (openai_sdk.APIStatusError, anthropic_sdk.APIStatusError)):
        return exc.status_code
    assert isinstance(exc, genai.errors.APIError), exc
    return int(exc.code)


def attempted(world: World, rid: str) -> list[str]:
    """The faults the mock played for one request (the gateway's request id, which it passes upstream)."""
    return [r["fault"] or "healthy" for r in world.mock_stats()["requests"] if r["request_id"] == rid]


async def window_errors(base: str, world: World, cid: str) -> int:
    """The failures the shared circuit breaker counted for a channel (any gateway process reports them)."""
    async with httpx.AsyncClient() as client:
        r = await client.get(
            f"{base}/internal/channels/health", headers={"x-internal-token": world.common.internal_token}
        )
    return int(next(c for c in r.json()["channels"] if c["channel_id"] == cid)["window_errors"])


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_an_error_first_stream_is_served_by_the_next_channel(
    world: World, gateways: list[procs.ServiceProcess], dialect: str
) -> None:
    erring, healthy = f"erring-{dialect}", f"healthy-{dialect}"
    await use_catalog(
        world,
        gateways,
        [
            dialect_channel(world, erring, dialect, fault="error_after=0", priority=10),
            dialect_channel(world, healthy, dialect, priority=1),
        ],
    )
    secret, snap = await world.add_key()
    rid = "req_" + secrets.token_hex(8)
    base = gateways[0].url

    text = await ask_streaming(base, dialect, secret, rid)

    # the whole answer of the healthy channel, with no trace of the other channel's error
    assert len(text) > 20
    [event] = await usage_events_of_key(world.res, snap.key_id)
    assert attempted(world, event.request_id) == ["error_after=0", "healthy"]
    assert event.channel_id == healthy and event.status == 200 and event.completion_tokens > 0
    # the erring channel's failure counts against its health, as a 5xx would

    async def blamed() -> bool:
        return await window_errors(base, world, erring) >= 1

    await eventually(blamed)


@pytest.mark.parametrize(
    ("fault", "status"),
    [("error_after=0", 502), ("error_after=0;error_status=400", 400)],
    ids=["upstream_failed", "request_invalid"],
)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_when_every_channel_errs_first_the_client_gets_a_plain_error(
    world: World, gateways: list[procs.ServiceProcess], dialect: str, fault: str, status: int
) -> None:
    await use_catalog(
        world,
        gateways,
        [
            dialect_channel(world, f"first-{dialect}-{status}", dialect, fault=fault, priority=10),
            dialect_channel(world, f"second-{dialect}-{status}", dialect, fault=fault, priority=1),
        ],
    )
    secret, snap = await world.add_key()
    rid = "req_" + secrets.token_hex(8)

    with pytest.raises((openai_sdk.APIStatusError, anthropic_sdk.APIStatusError, genai.errors.APIError)) as info:
        await ask_streaming(gateways[0].url, dialect, secret, rid)

    assert status_of(info.value) == status
    [event] = await usage_events_of_key(world.res, snap.key_id)
    # an invalid request is the request's fault: no other channel is asked
    assert attempted(world, event.request_id) == ([fault] if status == 400 else [fault, fault])
    assert event.status == status and event.completion_tokens == 0


# --- the head of a stream arriving in pieces (the upstream faked as a chunk iterator) ----------------------


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


OPENAI_ERROR = b'data: {"error": {"message": "overloaded", "type": "server_error", "code": null}}\n\n'
ANTHROPIC_ERROR = (
    b'event: error\ndata: {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}\n\n'
)
GEMINI_ERROR = b'data: {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}\r\n\r\n'


@pytest.mark.parametrize(
    ("provider", "stream", "reason"),
    [
        (p_openai, OPENAI_ERROR, "error_first_event"),
        (p_anthropic, ANTHROPIC_ERROR, "rejected_first_event"),
        (p_gemini, GEMINI_ERROR, "error_first_event"),
        (p_gemini, b'{"error": {"code": 400, "status": "INVALID_ARGUMENT"}}', "rejected_first_event"),
    ],
)
async def test_an_error_event_split_across_chunks_is_still_caught(provider: Any, stream: bytes, reason: str) -> None:
    cut = [stream[:7], stream[7:30], stream[30:]]
    with pytest.raises(AttemptFailed) as info:
        await _stream_head(provider, pieces(*cut))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("provider", "stream"),
    [
        (p_openai, b'data: {"id":"chatcmpl-1","choices":[{"delta":{"role":"assistant"}}]}\n\ndata: {"id":'),
        (p_openai, b': keep-alive\n\ndata: {"error": {"type": "server_error"}}\n\n'),
        (p_openai, b'data: {"object":"chat.completion.chunk","choices":[]}\n\n'),
        (p_anthropic, b'event: message_start\ndata: {"type":"message_start","message":{"id":"m'),
        (p_anthropic, b'event: ping\ndata: {"type": "ping"}\n\n'),
        (p_gemini, b'data: {"candidates": [{"content": {"parts": [{"text": "Hi'),
    ],
)
async def test_an_answer_goes_on_with_exactly_the_bytes_that_came(provider: Any, stream: bytes) -> None:
    assert await _stream_head(provider, pieces(stream[:9], stream[9:])) == stream


async def test_a_first_event_with_no_end_in_sight_is_forwarded_after_a_bounded_read() -> None:
    endless = b'data: {"choices": [{"delta": {"content": "' + b"x" * 100_000
    head = await _stream_head(p_openai, pieces(*(endless[i : i + 4096] for i in range(0, len(endless), 4096))))
    assert endless.startswith(head) and 64 * 1024 <= len(head) < len(endless)
