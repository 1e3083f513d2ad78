"""The fake provider speaks OpenAI well enough for the official `openai` SDK: replies, streams, tools, usage,
and every fault a gateway must survive."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.mock_upstream.conftest import DROPPED, KEY

Stats = Callable[[], dict[str, Any]]
USER = [{"role": "user", "content": "Tell me something about zanzibarquux."}]


@pytest.fixture
def client(mock_url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=mock_url + "/v1", max_retries=0, timeout=10)


def test_completion_is_deterministic_with_usage_and_never_echoes_the_prompt(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    again = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    text = first.choices[0].message.content
    assert text and text == again.choices[0].message.content
    assert "zanzibarquux" not in text.lower()
    assert first.choices[0].finish_reason == "stop"
    assert first.model == "gpt-4o-mini"
    usage = first.usage
    assert usage and usage.prompt_tokens > 5 and usage.completion_tokens >= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens == 0


def test_stream_has_role_first_content_finish_usage_then_done(client: openai.OpenAI, mock_url: str) -> None:
    whole = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 20  # the default number of pieces
    assert (
        "".join(c.choices[0].delta.content or "" for c in content_chunks) == whole.choices[0].message.content
    )
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    raw = httpx.post(
        mock_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "gpt-4o-mini", "messages": USER, "stream": True},
    ).text
    assert raw.endswith("data: [DONE]\n\n")
    assert '"usage"' not in raw  # usage only when asked for


def test_max_tokens_n_and_stop_are_honoured(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=5)
    assert short.usage and short.usage.completion_tokens <= 5
    assert short.choices[0].finish_reason == "length"
    newer = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_completion_tokens=7)
    assert newer.usage and newer.usage.completion_tokens <= 7

    three = client.chat.completions.create(model="gpt-4o-mini", messages=USER, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.message.content for c in three.choices}) == 3

    full = client.chat.completions.create(model="gpt-4o-mini", messages=USER).choices[0].message.content or ""
    word = full.split()[3]
    cut = client.chat.completions.create(model="gpt-4o-mini", messages=USER, stop=[word])
    assert cut.choices[0].message.content == full[: full.index(word)]
    assert cut.choices[0].finish_reason == "stop"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["location"],
        },
    },
}


def test_tool_call_non_stream_and_stream(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    resp = client.chat.completions.create(model="gpt-4o", messages=ask, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and call.id.startswith("call_")  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "c"}  # type: ignore[union-attr]

    pieces: list[str] = []
    finish = None
    for chunk in client.chat.completions.create(
        model="gpt-4o",
        messages=ask,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=True,
    ):
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                if tc.id:
                    assert tc.id == call.id and tc.function and tc.function.name == "get_weather"
                pieces.append(tc.function.arguments or "" if tc.function else "")
            finish = c.finish_reason or finish
    assert len([p for p in pieces if p]) > 1  # arguments arrive in pieces
    assert "".join(pieces) == call.function.arguments  # type: ignore[union-attr]
    assert finish == "tool_calls"

    # After the tool answered, the model talks again; and a forced tool_choice calls without the magic word.
    follow = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    after = client.chat.completions.create(model="gpt-4o", messages=follow, tools=[WEATHER_TOOL])  # type: ignore[arg-type,list-item]
    assert after.choices[0].finish_reason == "stop" and after.choices[0].message.content
    forced = client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        tools=[WEATHER_TOOL],  # type: ignore[arg-type,list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert forced.choices[0].message.tool_calls


def test_json_mode_and_reasoning_content(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="gpt-4o", messages=USER, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)

    thought = client.chat.completions.create(model="deepseek-reasoner", messages=USER)
    extra = thought.choices[0].message.model_extra or {}
    assert extra.get("reasoning_content")
    assert thought.usage and thought.usage.completion_tokens_details
    assert thought.usage.completion_tokens_details.reasoning_tokens > 0
    streamed = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in client.chat.completions.create(model="deepseek-reasoner", messages=USER, stream=True)
        if c.choices
    )
    assert streamed == extra["reasoning_content"]


def test_long_prompts_report_cached_tokens_and_a_header_can_force_them(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "lorem " * 1500}]
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=long)  # type: ignore[arg-type]
    assert resp.usage and resp.usage.prompt_tokens_details
    assert 1024 <= resp.usage.prompt_tokens_details.cached_tokens <= resp.usage.prompt_tokens
    forced = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,  # type: ignore[arg-type]
        extra_headers={"x-mock-fault": "cached=4"},
    )
    assert forced.usage and forced.usage.prompt_tokens_details
    assert forced.usage.prompt_tokens_details.cached_tokens == 4


def test_embeddings_images_and_models(client: openai.OpenAI) -> None:
    emb = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    assert [len(d.embedding) for d in emb.data] == [1536, 1536]
    assert abs(sum(v * v for v in emb.data[0].embedding) - 1) < 1e-3
    again = client.embeddings.create(
        model="text-embedding-3-small", input="alpha", dimensions=1536, encoding_format="float"
    )
    assert again.data[0].embedding == pytest.approx(emb.data[0].embedding, abs=1e-6)
    assert emb.usage.prompt_tokens == 3
    assert (
        len(
            client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=64)
            .data[0]
            .embedding
        )
        == 64
    )

    b64 = client.images.generate(model="gpt-image-1", prompt="a red fox")
    assert b64.data and b64.data[0].b64_json and b64.usage and b64.usage.input_tokens > 0
    url = client.images.generate(model="dall-e-3", prompt="a red fox", response_format="url", n=2)
    assert url.data and len(url.data) == 2 and url.data[0].url
    png = httpx.get(url.data[0].url)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


def test_errors_use_openai_shape_and_status(client: openai.OpenAI, mock_url: str) -> None:
    anonymous = httpx.post(mock_url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-4o", messages=[])
    assert bad.value.body["param"] == "messages"  # type: ignore[index]
    r = httpx.post(
        mock_url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, content=b"{not json"
    )
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_status_faults_by_header_and_by_model_suffix(client: openai.OpenAI, stats: Stats) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini@fail500", messages=USER)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, extra_headers={"x-mock-fault": "status=429;retry_after=2"}
        )
    assert limited.value.response.headers["retry-after"] == "2"
    assert limited.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.APIStatusError) as unavailable:
        client.chat.completions.create(model="gpt-4o-mini@status=503", messages=USER, stream=True)
    assert unavailable.value.status_code == 503
    with pytest.raises(openai.BadRequestError, match="unknown mock fault"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, extra_headers={"x-mock-fault": "stauts=500"}
        )
    seen = stats()
    # A malformed fault description is refused before the request counts as received.
    assert seen["by_model"]["gpt-4o-mini"] == 3
    assert [r["status"] for r in seen["requests"]] == [500, 429, 503]


def test_delay_before_first_byte_trips_a_client_timeout_and_is_seen_as_cancelled(
    mock_url: str, stats: Stats
) -> None:
    slow = openai.OpenAI(api_key=KEY, base_url=mock_url + "/v1", max_retries=0, timeout=0.5)
    began = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        slow.chat.completions.create(
            model="gpt-4o-mini", messages=USER, extra_headers={"x-mock-fault": "delay_first_ms=3000"}
        )
    assert time.monotonic() - began < 2.5
    deadline = time.monotonic() + 5
    while stats()["cancelled"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats()["requests"][0]["outcome"] == "cancelled"


def test_delay_between_chunks_and_chunk_count(client: openai.OpenAI) -> None:
    began = time.monotonic()
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=USER,
            stream=True,
            extra_headers={"x-mock-fault": "chunks=4;delay_chunk_ms=100"},
        )
    )
    elapsed = time.monotonic() - began
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4
    assert elapsed >= 0.1 * (len(chunks) - 1)  # role, 4 pieces, finish: 5 gaps (no usage chunk asked)


def test_disconnect_mid_stream_breaks_the_stream(client: openai.OpenAI, stats: Stats) -> None:
    received = []
    with pytest.raises((*DROPPED, openai.APIError)):
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini@disconnect_after=3", messages=USER, stream=True
        ):
            received.append(chunk)
    assert len(received) == 3
    with pytest.raises((*DROPPED, openai.APIError)):
        client.chat.completions.create(model="gpt-4o-mini@disconnect_after=0", messages=USER)
    assert [r["outcome"] for r in stats()["requests"]] == ["disconnected", "disconnected"]


def test_client_hanging_up_mid_stream_is_recorded(mock_url: str, stats: Stats) -> None:
    with httpx.stream(
        "POST",
        mock_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}", "x-mock-fault": "delay_chunk_ms=200"},
        json={"model": "gpt-4o-mini", "messages": USER, "stream": True},
    ) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    deadline = time.monotonic() + 5
    while stats()["cancelled"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    entry = stats()["requests"][0]
    assert entry["outcome"] == "cancelled" and entry["events_sent"] < 5


def test_no_usage_and_garbage_faults(client: openai.OpenAI, mock_url: str) -> None:
    bare = client.chat.completions.create(model="gpt-4o-mini@no_usage=1", messages=USER)
    assert bare.usage is None and bare.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini@no_usage=1", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None for c in chunks) and chunks[-1].choices
    junk = httpx.post(
        mock_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "gpt-4o-mini@garbage=1", "messages": USER},
    )
    assert junk.status_code == 200 and junk.headers["content-type"].startswith("text/html")
    stream = httpx.post(
        mock_url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "gpt-4o-mini@garbage=1", "messages": USER, "stream": True},
    ).text
    good, bad = stream.split("\n\n")[:2]
    assert json.loads(good.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
    with pytest.raises(ValueError):
        json.loads(bad.removeprefix("data: "))


def test_a_tool_call_never_exceeds_max_tokens(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    resp = client.chat.completions.create(model="gpt-4o", messages=ask, tools=[WEATHER_TOOL], max_tokens=6)  # type: ignore[arg-type,list-item]
    assert resp.usage and resp.usage.completion_tokens <= 6
    assert resp.choices[0].finish_reason == "length"


def test_error_inside_a_stream_after_n_events(client: openai.OpenAI, stats: Stats) -> None:
    received = []
    with pytest.raises(openai.APIError, match="stopped mid-stream"):
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini@error_after=3", messages=USER, stream=True
        ):
            received.append(chunk)
    assert len(received) == 3
    assert stats()["requests"][0]["outcome"] == "stream_error"


def test_stream_options_without_stream_is_refused_as_openai_does(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
    assert refused.value.body["param"] == "stream_options"  # type: ignore[index]


def test_temperature_out_of_range_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, temperature=2.5)  # type: ignore[arg-type]
    assert refused.value.body["param"] == "temperature"  # type: ignore[index]
