"""The fake provider speaks Anthropic Messages well enough for the official `anthropic` SDK."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest

from tests.mock_upstream.conftest import DROPPED, KEY

Stats = Callable[[], dict[str, Any]]
ASK = [{"role": "user", "content": "Describe qwertyzork in one paragraph."}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def client(mock_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=mock_url, max_retries=0, timeout=10)


def test_message_with_system_prompt_usage_and_determinism(client: anthropic.Anthropic, stats: Stats) -> None:
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=200, system="Be brief.", messages=ASK)  # type: ignore[arg-type]
    again = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, system="Be brief.", messages=ASK
    )  # type: ignore[arg-type]
    assert msg.type == "message" and msg.role == "assistant" and msg.stop_reason == "end_turn"
    text = msg.content[0].text  # type: ignore[union-attr]
    assert text == again.content[0].text and "qwertyzork" not in text.lower()  # type: ignore[union-attr]
    assert msg.usage.input_tokens > 5 and msg.usage.output_tokens >= 24
    assert msg.usage.cache_read_input_tokens == 0
    assert stats()["requests"][0]["api_key"] == KEY
    assert (
        client.messages.count_tokens(model="claude-sonnet-4-6", system="Be brief.", messages=ASK).input_tokens
        == msg.usage.input_tokens
    )  # type: ignore[arg-type]


def test_stream_events_in_order_and_text_matches(client: anthropic.Anthropic, mock_url: str) -> None:
    whole = client.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=ASK)  # type: ignore[arg-type]
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=300, messages=ASK) as stream:  # type: ignore[arg-type]
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == "end_turn"
    raw = httpx.post(
        mock_url + "/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-4-5", "max_tokens": 300, "messages": ASK, "stream": True},
    ).text
    names = [line.removeprefix("event: ") for line in raw.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert names.count("content_block_delta") == 20
    assert "text" in kinds and "message_stop" in kinds


def test_tool_use_stream_and_not(client: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What's the weather in Rome?"}]
    msg = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=200,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=ask,
    )  # type: ignore[arg-type]
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    use = msg.content[1]
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id.startswith("toolu_")  # type: ignore[union-attr]
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=200,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=ask,
    ) as stream:  # type: ignore[arg-type]
        partials = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len([p for p in partials if p]) > 1
    assert final.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]

    answered = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21C"}]},
    ]  # type: ignore[union-attr]
    after = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=200,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=answered,
    )  # type: ignore[arg-type]
    assert after.stop_reason == "end_turn" and after.content[0].type == "text"
    forced = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=200,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=ASK,
    )  # type: ignore[arg-type]
    assert [b.type for b in forced.content] == ["tool_use"]


def test_max_tokens_stop_sequences_thinking_and_cache(client: anthropic.Anthropic) -> None:
    short = client.messages.create(model="claude-haiku-4-5", max_tokens=4, messages=ASK)  # type: ignore[arg-type]
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens <= 4
    full = client.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=ASK)  # type: ignore[arg-type]
    word = full.content[0].text.split()[2]  # type: ignore[union-attr]
    cut = client.messages.create(
        model="claude-haiku-4-5", max_tokens=300, stop_sequences=[word], messages=ASK
    )  # type: ignore[arg-type]
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == word
    assert word not in cut.content[0].text  # type: ignore[union-attr]

    thought = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=400,
        messages=ASK,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert [b.type for b in thought.content] == ["thinking", "text"]

    long = [{"role": "user", "content": "lorem " * 1500}]
    cached = client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=long)  # type: ignore[arg-type]
    assert cached.usage.cache_read_input_tokens and cached.usage.cache_read_input_tokens >= 1024
    forced = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=50,
        messages=ASK,  # type: ignore[arg-type]
        extra_headers={"x-mock-fault": "cached=3"},
    )
    assert forced.usage.cache_read_input_tokens == 3


def test_errors_in_anthropic_shape(client: anthropic.Anthropic, mock_url: str) -> None:
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude-haiku-4-5@status=429;retry_after=3", max_tokens=10, messages=ASK)  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-haiku-4-5@fail529", max_tokens=10, messages=ASK)  # type: ignore[arg-type]
    no_max = httpx.post(
        mock_url + "/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-4-5", "messages": ASK},
    )
    assert no_max.status_code == 400
    assert no_max.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    anonymous = httpx.post(
        mock_url + "/v1/messages", json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": ASK}
    )
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"


def test_disconnect_mid_stream_and_models(client: anthropic.Anthropic, stats: Stats) -> None:
    seen = []
    with (
        pytest.raises((*DROPPED, anthropic.APIError)),
        client.messages.stream(
            model="claude-haiku-4-5@disconnect_after=4", max_tokens=100, messages=ASK
        ) as stream,
    ):  # type: ignore[arg-type]
        for event in stream:
            seen.append(event.type)
    assert stats()["requests"][0]["outcome"] == "disconnected"
    assert "message_stop" not in seen
    ids = [m.id for m in client.models.list()]
    assert "claude-sonnet-4-6" in ids


def test_no_usage_fault_drops_usage(mock_url: str) -> None:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "x-mock-fault": "no_usage=1"}
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": ASK}
    assert "usage" not in httpx.post(mock_url + "/v1/messages", headers=headers, json=body).json()
    raw = httpx.post(mock_url + "/v1/messages", headers=headers, json={**body, "stream": True}).text
    assert '"usage"' not in raw and "message_stop" in raw


def test_error_event_inside_a_stream(client: anthropic.Anthropic, mock_url: str) -> None:
    with (
        pytest.raises(anthropic.APIStatusError, match="Overloaded"),
        client.messages.stream(
            model="claude-haiku-4-5@error_after=4",
            max_tokens=100,
            messages=ASK,  # type: ignore[arg-type]
        ) as stream,
    ):
        for _ in stream:
            pass
    raw = httpx.post(
        mock_url + "/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-4-5@error_after=4", "max_tokens": 100, "messages": ASK, "stream": True},
    ).text
    assert raw.endswith(
        'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )


def test_a_call_without_anthropic_version_is_refused(mock_url: str) -> None:
    r = httpx.post(
        mock_url + "/v1/messages",
        headers={"x-api-key": KEY},
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": ASK},
    )
    assert r.status_code == 400 and r.json()["error"]["message"] == "anthropic-version: header is required"


def test_sampling_parameters_follow_the_api_version(mock_url: str) -> None:
    def ask(version: str, **sampling: float) -> httpx.Response:
        return httpx.post(
            mock_url + "/v1/messages",
            headers={"x-api-key": KEY, "anthropic-version": version},
            json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": ASK, **sampling},
        )

    assert ask("2023-06-01", temperature=0.5, top_p=0.9).status_code == 200
    too_hot = ask("2023-06-01", temperature=1.5)
    assert too_hot.status_code == 400 and "temperature" in too_hot.json()["error"]["message"]
    # The version Anthropic's 2.x SDKs send refuses sampling parameters at any value, defaults included.
    refused = ask("2026-10-21", temperature=1.0)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "temperature: Extra inputs are not permitted"
    assert ask("2026-10-21").status_code == 200


def test_structured_output_is_json(mock_url: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    r = httpx.post(
        mock_url + "/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "messages": ASK,
            "output_config": {"format": {"type": "json_schema", "schema": schema}},
        },
    )
    assert json.loads(r.json()["content"][0]["text"]) == {"city": "Paris"}
