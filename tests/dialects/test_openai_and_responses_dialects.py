"""The OpenAI passthrough helpers and the Responses API translator."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway.dialects import openai, responses
from services.gateway.dialects.errors import InvalidField, UnsupportedField, UpstreamStreamError
from services.gateway.dialects.openai import TokenUsage
from tests.dialects.recorded import (
    OPENAI_TEXT_STREAM,
    OPENAI_TOOL_RESPONSE,
    OPENAI_TOOL_STREAM,
    openai_chunks,
    sse_events,
)


def test_passthrough_rewrites_only_the_model_and_asks_for_usage_in_streams() -> None:
    body = {
        "model": "alias",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_obfuscation": False},
        "vendor_knob": 3,
    }
    out = openai.to_upstream(body, "gpt-4o-mini")
    assert out == {
        **body,
        "model": "gpt-4o-mini",
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }
    assert body["model"] == "alias" and "include_usage" not in body["stream_options"]  # not mutated
    assert "stream_options" not in openai.to_upstream({"model": "a", "messages": []}, "b")
    with pytest.raises(UnsupportedField) as refused:
        openai.to_upstream({"model": "a", "messages": [], "top_k": 5}, "b", translated=True)
    assert refused.value.field == "top_k"
    assert openai.to_upstream({"model": "a", "messages": [], "top_k": 5}, "b")["top_k"] == 5


def test_usage_is_read_from_whole_answers_and_final_chunks() -> None:
    assert openai.response_usage(OPENAI_TOOL_RESPONSE) == TokenUsage(
        prompt_tokens=1117, completion_tokens=46, cached_tokens=1024
    )
    chunks = openai_chunks(OPENAI_TEXT_STREAM)
    assert [openai.chunk_usage(c) for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert openai.chunk_usage(chunks[-1]) == TokenUsage(
        prompt_tokens=20, completion_tokens=9, reasoning_tokens=4
    )
    # Some compatible upstreams send only totals.
    assert openai.usage_from_openai({"prompt_tokens": 10, "total_tokens": 25}) == TokenUsage(
        prompt_tokens=10, completion_tokens=15
    )
    assert openai.usage_from_openai(None) is None


def test_usage_chunk_reaches_the_client_only_when_asked() -> None:
    usage_chunk = openai_chunks(OPENAI_TOOL_STREAM)[-1]
    content_chunk = openai_chunks(OPENAI_TOOL_STREAM)[1]
    asked = {"stream_options": {"include_usage": True}}
    assert openai.strip_usage_chunk(usage_chunk, {}) is None
    assert openai.strip_usage_chunk(usage_chunk, asked) == usage_chunk
    assert "usage" not in (openai.strip_usage_chunk(content_chunk, {}) or {})
    assert openai.strip_usage_chunk(content_chunk, asked) == content_chunk
    assert openai.error_body(402, "insufficient_quota", "top up") == {
        "error": {
            "message": "top up",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }


AGENT_REQUEST: dict[str, Any] = {
    "model": "gpt-4.1",
    "instructions": "You are a coding agent.",
    "input": [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather in Paris?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"location":"Paris"}',
        },
        {
            "type": "function_call",
            "call_id": "call_2",
            "name": "get_weather",
            "arguments": '{"location":"Rome"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "21C"},
        {"type": "function_call_output", "call_id": "call_2", "output": "25C"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris 21C."}]},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather",
            "strict": True,
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        }
    ],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
    "reasoning": {"effort": "low"},
    "max_output_tokens": 500,
    "temperature": 0.1,
    "store": False,
    "stream": True,
}


def test_responses_request_becomes_chat() -> None:
    out = responses.request_to_chat(AGENT_REQUEST)
    assert out == {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "You are a coding agent."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "25C"},
            {"role": "assistant", "content": "Paris 21C."},
            {"role": "user", "content": "Thanks"},
        ],
        "max_completion_tokens": 500,
        "temperature": 0.1,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather",
                    "strict": True,
                    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_responses_requests_needing_server_state_or_hosted_tools_are_refused() -> None:
    with pytest.raises(UnsupportedField) as stateful:
        responses.request_to_chat({"model": "m", "input": "hi", "previous_response_id": "resp_1"})
    assert stateful.value.field == "previous_response_id"
    with pytest.raises(UnsupportedField) as hosted:
        responses.request_to_chat({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]})
    assert hosted.value.field == "tools[0].type"
    with pytest.raises(InvalidField):
        responses.request_to_chat({"model": "m", "input": 42})


def test_chat_answer_becomes_a_response_object() -> None:
    out = responses.response_from_chat(OPENAI_TOOL_RESPONSE, {"model": "gpt-4o", "input": "hi"})
    assert out["object"] == "response" and out["status"] == "completed" and out["id"].startswith("resp_")
    assert [o["type"] for o in out["output"]] == ["message", "function_call"]
    assert out["output"][0]["content"][0] == {
        "type": "output_text",
        "text": "Checking.",
        "annotations": [],
        "logprobs": [],
    }
    assert out["output"][1]["call_id"] == "call_62136354"
    assert out["usage"] == {
        "input_tokens": 1117,
        "input_tokens_details": {"cached_tokens": 1024},
        "output_tokens": 46,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1163,
    }
    cut = {
        **OPENAI_TOOL_RESPONSE,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}
        ],
    }
    short = responses.response_from_chat(cut, {"model": "m"})
    assert short["status"] == "incomplete" and short["incomplete_details"] == {"reason": "max_output_tokens"}


def test_chat_stream_becomes_response_events_in_order() -> None:
    conv = responses.StreamFromChat({"model": "deepseek-reasoner", "input": "hi"}, "deepseek-reasoner")
    frames: list[bytes] = []
    for chunk in openai_chunks(OPENAI_TEXT_STREAM):
        frames += conv.feed(chunk)
    frames += conv.finish()
    events = sse_events(b"".join(frames))
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert all(name == d["type"] for name, d in events)
    names = [n for n, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.incomplete"  # the upstream stopped at its token limit
    assert names.index("response.reasoning_summary_text.done") < names.index("response.output_text.delta")
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert text == "Hello world"
    final = events[-1][1]["response"]
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 4

    tools = responses.StreamFromChat({"model": "gpt-4o"}, "gpt-4o")
    frames = [f for c in openai_chunks(OPENAI_TOOL_STREAM) for f in tools.feed(c)] + tools.finish()
    events = sse_events(b"".join(frames))
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert done["arguments"] == '{"location":"Paris"}' and done["name"] == "get_weather"
    assert events[-1][0] == "response.completed"
    assert events[-1][1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] == 1152


def test_a_failed_stream_ends_with_response_failed() -> None:
    conv = responses.StreamFromChat({"model": "m"}, "m")
    events = sse_events(b"".join(conv.error("upstream went away")))
    assert events[-1][0] == "response.failed"
    assert events[-1][1]["response"]["error"] == {"code": "server_error", "message": "upstream went away"}


def test_an_error_event_in_an_openai_stream_raises() -> None:
    openai.raise_for_stream_error(openai_chunks(OPENAI_TEXT_STREAM)[1])  # an ordinary chunk passes
    with pytest.raises(UpstreamStreamError) as err:
        openai.raise_for_stream_error({"error": {"message": "overloaded", "type": "server_error"}})
    assert (err.value.kind, err.value.message) == ("server_error", "overloaded")
