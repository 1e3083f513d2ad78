"""Anthropic <-> internal OpenAI chat: requests, responses and streams both ways, usage and errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.gateway.dialects import anthropic
from services.gateway.dialects.errors import InvalidField, UnsupportedField, UpstreamStreamError
from services.gateway.dialects.openai import TokenUsage
from tests.dialects.recorded import (
    ANTHROPIC_RESPONSE,
    ANTHROPIC_TOOL_STREAM,
    OPENAI_TEXT_STREAM,
    OPENAI_TOOL_RESPONSE,
    OPENAI_TOOL_STREAM,
    openai_chunks,
    sse_events,
)

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"

CLIENT_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "21C"}],
                },
                {"type": "text", "text": "Thanks. Summarise."},
            ],
        },
    ],
    "stop_sequences": ["END"],
    "temperature": 0.2,
    "top_k": 40,
    "tools": [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
        }
    ],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "metadata": {"user_id": "user-42"},
    "stream": True,
}


def test_client_request_becomes_openai_chat_with_tool_turns_in_order() -> None:
    out = anthropic.request_to_openai(CLIENT_REQUEST)
    assert out == {
        "model": "claude-sonnet-4-6",
        "max_completion_tokens": 1024,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture, and the weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
            {"role": "user", "content": "Thanks. Summarise."},
        ],
        "stop": ["END"],
        "temperature": 0.2,
        "top_k": 40,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
                },
            }
        ],
        "parallel_tool_calls": False,
        "tool_choice": "required",
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_client_request_errors_name_the_field() -> None:
    with pytest.raises(UnsupportedField) as unknown:
        anthropic.request_to_openai({**CLIENT_REQUEST, "container": "c1"})
    assert unknown.value.field == "container"
    with pytest.raises(UnsupportedField) as server_tool:
        anthropic.request_to_openai(
            {**CLIENT_REQUEST, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
        )
    assert server_tool.value.field == "tools.0.type"
    with pytest.raises(InvalidField) as no_max:
        anthropic.request_to_openai({k: v for k, v in CLIENT_REQUEST.items() if k != "max_tokens"})
    assert no_max.value.field == "max_tokens"
    thinking = anthropic.request_to_openai(
        {**CLIENT_REQUEST, "thinking": {"type": "enabled", "budget_tokens": 2000}}
    )
    assert thinking["reasoning_effort"] == "low"


OPENAI_REQUEST: dict[str, Any] = {
    "model": "my-claude",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris and Rome? Also this:"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "21C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "25C"},
    ],
    "max_completion_tokens": 300,
    "stop": "STOP",
    "temperature": 0.5,
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "user": "u1",
    "stream": True,
    "stream_options": {"include_usage": True},
}


def test_openai_request_becomes_anthropic_with_merged_tool_results() -> None:
    out = anthropic.request_from_openai(OPENAI_REQUEST, "claude-haiku-4-5")
    assert out == {
        "model": "claude-haiku-4-5",
        "max_tokens": 300,
        "system": "Be brief.\n\nUse metric units.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris and Rome? Also this:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_a",
                        "name": "get_weather",
                        "input": {"location": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_b",
                        "name": "get_weather",
                        "input": {"location": "Rome"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_a", "content": "21C"},
                    {"type": "tool_result", "tool_use_id": "call_b", "content": "25C"},
                ],
            },
        ],
        "stop_sequences": ["STOP"],
        "temperature": 0.5,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "metadata": {"user_id": "u1"},
        "stream": True,
    }


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "grammar"}}, "response_format.type"),
        ({"temperature": 1.7}, "temperature"),
        ({"logprobs": True}, "logprobs"),
        ({"seed": 7}, "seed"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_openai_fields_anthropic_cannot_express_are_refused_by_name(
    patch: dict[str, Any], field: str
) -> None:
    with pytest.raises(UnsupportedField) as refused:
        anthropic.request_from_openai({**OPENAI_REQUEST, **patch}, "claude-haiku-4-5")
    assert refused.value.field == field and "anthropic" in refused.value.message


def test_defaults_and_reasoning_effort_for_anthropic() -> None:
    plain = anthropic.request_from_openai(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "c"
    )
    assert plain == {
        "model": "c",
        "max_tokens": anthropic.DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    effortful = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
        "reasoning_effort": "medium",
        "temperature": 0.3,
    }
    adaptive = anthropic.request_from_openai(effortful, "c")
    assert adaptive["thinking"] == {"type": "adaptive"}
    assert adaptive["output_config"] == {"effort": "medium"} and "temperature" not in adaptive
    budget = anthropic.request_from_openai(effortful, "c", thinking="budget")
    assert budget["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert budget["max_tokens"] > 8192 and "temperature" not in budget and "output_config" not in budget
    with pytest.raises(InvalidField):
        anthropic.request_from_openai(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{oops"}}],
                    }
                ],
            },
            "c",
        )


def test_anthropic_response_becomes_openai_with_cache_reads_in_prompt() -> None:
    out = anthropic.response_to_openai(ANTHROPIC_RESPONSE)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check."
    assert choice["message"]["reasoning_content"] == "The user wants weather."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Paris", "unit": "c"}'},
        }
    ]
    assert out["usage"]["prompt_tokens"] == 12 + 2048
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 2048
    assert out["usage"]["completion_tokens"] == 60 and out["usage"]["total_tokens"] == 2120


def test_openai_response_becomes_anthropic_with_cache_reads_out_of_input() -> None:
    out = anthropic.response_from_openai(OPENAI_TOOL_RESPONSE, "my-claude")
    assert out["type"] == "message" and out["model"] == "my-claude" and out["id"].startswith("msg_")
    assert out["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_62136354", "name": "get_weather", "input": {"location": "Paris"}},
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {
        "input_tokens": 1117 - 1024,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1024,
        "output_tokens": 46,
    }
    for finish, stop in [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")]:
        resp = {
            **OPENAI_TOOL_RESPONSE,
            "choices": [{**OPENAI_TOOL_RESPONSE["choices"][0], "finish_reason": finish}],
        }
        assert anthropic.response_from_openai(resp, "m")["stop_reason"] == stop


def test_anthropic_stream_becomes_openai_chunks() -> None:
    conv = anthropic.StreamToOpenAI()
    chunks: list[dict[str, Any]] = []
    for name, data in sse_events(ANTHROPIC_TOOL_STREAM):
        chunks += conv.feed(str(name), data)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["model"] == "claude-sonnet-4-6"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Okay, let me check."
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert (
        calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and calls[0]["function"]["name"] == "get_weather"
    )
    args = "".join(tc["function"]["arguments"] for tc in calls)
    assert json.loads(args) == {"location": "San Francisco, CA"}
    assert {tc["index"] for tc in calls} == {0}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 472 + 10 + 1024
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 1024
    assert chunks[-1]["usage"]["completion_tokens"] == 89
    assert conv.usage == TokenUsage(prompt_tokens=1506, completion_tokens=89, cached_tokens=1024)


def test_error_event_in_an_anthropic_stream_raises() -> None:
    conv = anthropic.StreamToOpenAI()
    with pytest.raises(UpstreamStreamError) as err:
        conv.feed("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert err.value.kind == "overloaded_error"


def _anthropic_events(frames: list[bytes]) -> list[tuple[str | None, Any]]:
    return sse_events(b"".join(frames))


def test_openai_tool_stream_becomes_anthropic_events() -> None:
    conv = anthropic.StreamFromOpenAI("my-claude")
    frames: list[bytes] = []
    for chunk in openai_chunks(OPENAI_TOOL_STREAM):
        frames += conv.feed(chunk)
    frames += conv.finish()
    events = _anthropic_events(frames)
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[2][1]["content_block"]
    assert start == {
        "type": "tool_use",
        "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "name": "get_weather",
        "input": {},
    }
    args = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(args) == {"location": "Paris"}
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {
        "input_tokens": 1300 - 1152,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1152,
        "output_tokens": 17,
    }


def test_openai_reasoning_stream_becomes_thinking_then_text_and_round_trips() -> None:
    out = anthropic.StreamFromOpenAI("deepseek")
    frames: list[bytes] = []
    for chunk in openai_chunks(OPENAI_TEXT_STREAM):
        frames += out.feed(chunk)
    frames += out.finish()
    events = _anthropic_events(frames)
    blocks = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert blocks == ["thinking", "text"]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    # Back again: what a client of ours would read equals what the upstream said.
    back = anthropic.StreamToOpenAI()
    chunks = [c for n, d in events for c in back.feed(str(n), d)]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "Hello world"
    )
    assert (
        "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
        == "Think first."
    )
    assert chunks[-1]["usage"]["completion_tokens"] == 9


def test_stream_error_and_error_body_shapes() -> None:
    conv = anthropic.StreamFromOpenAI("m")
    conv.feed(openai_chunks(OPENAI_TEXT_STREAM)[0])
    events = _anthropic_events(conv.error("upstream went away", 502))
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "upstream went away"}},
    )
    assert anthropic.error_body(429, "rate_limit_exceeded", "slow down") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


def test_count_tokens_bodies_translate_without_max_tokens() -> None:
    body = {"model": "claude-haiku-4-5", "system": "S", "messages": [{"role": "user", "content": "hi"}]}
    assert anthropic.request_to_openai(body, counting=True) == {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
    }
    with pytest.raises(InvalidField):
        anthropic.request_to_openai(body)
    assert anthropic.count_tokens_response(12) == {"input_tokens": 12}


def test_message_start_carries_the_gateways_prompt_estimate_and_message_delta_the_truth() -> None:
    conv = anthropic.StreamFromOpenAI("m", input_tokens=321)
    events = _anthropic_events(
        [f for c in openai_chunks(OPENAI_TEXT_STREAM) for f in conv.feed(c)] + conv.finish()
    )
    assert events[0][1]["message"]["usage"]["input_tokens"] == 321
    assert events[-2][1]["usage"]["input_tokens"] == 20


def test_an_api_version_without_sampling_refuses_what_would_change_the_answer() -> None:
    assert anthropic.takes_sampling("2023-06-01") and not anthropic.takes_sampling("2026-10-21")
    neutral = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1, "top_p": 1}
    out = anthropic.request_from_openai(neutral, "c", sampling=False)
    assert "temperature" not in out and "top_p" not in out
    with pytest.raises(UnsupportedField) as refused:
        anthropic.request_from_openai({**neutral, "temperature": 0.2}, "c", sampling=False)
    assert refused.value.field == "temperature"
    assert anthropic.request_from_openai({**neutral, "temperature": 0.2}, "c")["temperature"] == 0.2


def test_json_output_maps_to_output_config_format_both_ways() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    }
    assert anthropic.request_from_openai(chat, "c")["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    loose = {**chat, "response_format": {"type": "json_object"}}
    assert anthropic.request_from_openai(loose, "c")["output_config"]["format"]["schema"] == {
        "type": "object"
    }
    client = {
        "model": "c",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": schema}},
    }
    out = anthropic.request_to_openai(client)
    assert out["reasoning_effort"] == "high"
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    with pytest.raises(UnsupportedField) as refused:
        anthropic.request_to_openai({**client, "output_config": {"task_budget": 5}})
    assert refused.value.field == "output_config.task_budget"
