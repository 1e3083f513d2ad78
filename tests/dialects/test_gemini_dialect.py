"""Gemini <-> internal OpenAI chat: requests, responses and streams both ways, usage and errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.gateway.dialects import gemini
from services.gateway.dialects.errors import InvalidField, UnsupportedField, UpstreamStreamError
from services.gateway.dialects.openai import TokenUsage
from tests.dialects.recorded import (
    GEMINI_RESPONSE,
    GEMINI_STREAM,
    OPENAI_TEXT_STREAM,
    OPENAI_TOOL_RESPONSE,
    OPENAI_TOOL_STREAM,
    openai_chunks,
    sse_events,
)

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"

# What google-genai sends for a two-turn function-calling conversation (camelCase on the wire).
CLIENT_REQUEST: dict[str, Any] = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "Weather in Paris? See photo."},
                {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
            ],
        },
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}],
        },
    ],
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "generationConfig": {
        "maxOutputTokens": 200,
        "temperature": 0.4,
        "topP": 0.9,
        "topK": 32,
        "stopSequences": ["END"],
        "candidateCount": 1,
    },
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {"location": {"type": "STRING"}},
                        "required": ["location"],
                    },
                }
            ]
        }
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
}


def test_client_request_becomes_openai_chat_with_matching_call_ids() -> None:
    out = gemini.request_to_openai(CLIENT_REQUEST, "gemini-2.5-flash", stream=True)
    assert out == {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris? See photo."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1_get_weather",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1_get_weather", "content": '{"temp_c": 21}'},
        ],
        "max_completion_tokens": 200,
        "temperature": 0.4,
        "top_p": 0.9,
        "top_k": 32,
        "n": 1,
        "stop": ["END"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string"}},
                        "required": ["location"],
                    },
                },
            }
        ],
        "tool_choice": "auto",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_client_request_snake_case_json_mode_and_refusals() -> None:
    snake = {
        "contents": [{"parts": [{"text": "hi"}]}],
        "generation_config": {"response_mime_type": "application/json", "max_output_tokens": 9},
        "system_instruction": {"parts": [{"text": "S"}]},
    }
    out = gemini.request_to_openai(snake, "g", stream=False)
    assert out["response_format"] == {"type": "json_object"} and out["max_completion_tokens"] == 9
    assert out["messages"][0] == {"role": "system", "content": "S"}
    with pytest.raises(UnsupportedField) as search:
        gemini.request_to_openai({**CLIENT_REQUEST, "tools": [{"googleSearch": {}}]}, "g", stream=False)
    assert search.value.field == "tools[0]"
    with pytest.raises(UnsupportedField) as cached:
        gemini.request_to_openai({**CLIENT_REQUEST, "cachedContent": "cachedContents/1"}, "g", stream=False)
    assert cached.value.field == "cachedContent"
    with pytest.raises(UnsupportedField) as audio:
        gemini.request_to_openai(
            {**CLIENT_REQUEST, "generationConfig": {"responseModalities": ["AUDIO"]}}, "g", stream=False
        )
    assert audio.value.field == "generationConfig.responseModalities"
    with pytest.raises(InvalidField):
        gemini.request_to_openai({"contents": []}, "g", stream=False)


OPENAI_REQUEST: dict[str, Any] = {
    "model": "my-gemini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 21}'},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "max_tokens": 100,
    "temperature": 0.3,
    "stop": ["END"],
    "n": 2,
    "seed": 5,
    "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"location": {"type": "string"}},
                },
            },
        }
    ],
    "tool_choice": "required",
    "stream": True,
    "stream_options": {"include_usage": True},
}


def test_openai_request_becomes_gemini() -> None:
    out = gemini.request_from_openai(OPENAI_REQUEST, "gemini-2.5-flash")
    assert out == {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "Weather?"}, {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                    {"text": "And tomorrow?"},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 100,
            "temperature": 0.3,
            "candidateCount": 2,
            "seed": 5,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather",
                        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }
    assert gemini.upstream_path("gemini-2.5-flash", True) == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )


def test_openai_fields_gemini_cannot_express_are_refused() -> None:
    with pytest.raises(UnsupportedField) as refused:
        gemini.request_from_openai({**OPENAI_REQUEST, "logit_bias": {"50256": -100}}, "g")
    assert refused.value.field == "logit_bias"
    with pytest.raises(InvalidField) as orphan:
        gemini.request_from_openai(
            {"model": "m", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "g"
        )
    assert orphan.value.field == "messages[0].tool_call_id"
    with pytest.raises(InvalidField) as role:
        gemini.request_from_openai({"model": "m", "messages": [{"role": "narrator", "content": "x"}]}, "g")
    assert role.value.field == "messages[0].role"
    plain = gemini.request_from_openai({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "g")
    assert plain == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_gemini_response_becomes_openai_usage_includes_thoughts() -> None:
    out = gemini.response_to_openai(GEMINI_RESPONSE, "gemini-2.5-flash")
    choice = out["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "It is sunny.",
        "reasoning_content": "Weighing it up.",
    }
    assert choice["finish_reason"] == "length"
    assert out["usage"]["prompt_tokens"] == 2000
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 1500
    assert out["usage"]["completion_tokens"] == 25
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 20
    blocked = gemini.response_to_openai(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}, "g"
    )
    assert blocked["choices"][0]["finish_reason"] == "content_filter"


def test_openai_response_becomes_gemini() -> None:
    out = gemini.response_from_openai(OPENAI_TOOL_RESPONSE, "my-gemini")
    assert out["candidates"] == [
        {
            "content": {
                "parts": [
                    {"text": "Checking."},
                    {
                        "functionCall": {
                            "id": "call_62136354",
                            "name": "get_weather",
                            "args": {"location": "Paris"},
                        }
                    },
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ]
    assert out["usageMetadata"] == {
        "promptTokenCount": 1117,
        "candidatesTokenCount": 46,
        "totalTokenCount": 1163,
        "cachedContentTokenCount": 1024,
    }
    assert out["modelVersion"] == "my-gemini"


def test_gemini_stream_becomes_openai_chunks() -> None:
    conv = gemini.StreamToOpenAI("gemini-2.5-flash")
    chunks: list[dict[str, Any]] = []
    for _, data in sse_events(GEMINI_STREAM):
        chunks += conv.feed(data)
    chunks += conv.finish()
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == (
        "Sure, checking."
    )
    call = next(
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"].get("tool_calls")
    )
    assert call["function"] == {"name": "get_weather", "arguments": '{"location": "Paris"}'}
    assert call["id"].startswith("call_")
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] == 1200
    assert chunks[-1]["usage"]["completion_tokens"] == 45
    assert conv.usage == TokenUsage(
        prompt_tokens=1200, completion_tokens=45, cached_tokens=1024, reasoning_tokens=30
    )
    with pytest.raises(UpstreamStreamError):
        conv.feed({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})


def test_openai_streams_become_gemini_payloads() -> None:
    conv = gemini.StreamFromOpenAI("my-gemini")
    frames: list[bytes] = []
    for chunk in openai_chunks(OPENAI_TOOL_STREAM):
        frames += conv.feed(chunk)
    frames += conv.finish()
    assert all(f.startswith(b"data: ") and f.endswith(b"\r\n\r\n") for f in frames)
    payloads = [d for _, d in sse_events(b"".join(frames))]
    assert len(payloads) == 1  # a function call arrives whole, with the finish reason and usage
    last = payloads[-1]
    assert last["candidates"][0]["content"]["parts"] == [
        {
            "functionCall": {
                "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                "name": "get_weather",
                "args": {"location": "Paris"},
            }
        }
    ]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["cachedContentTokenCount"] == 1152

    text = gemini.StreamFromOpenAI("r")
    frames = [f for chunk in openai_chunks(OPENAI_TEXT_STREAM) for f in text.feed(chunk)] + text.finish()
    payloads = [d for _, d in sse_events(b"".join(frames))]
    parts = [p for d in payloads for p in d["candidates"][0]["content"]["parts"]]
    assert "".join(p["text"] for p in parts if not p.get("thought")) == "Hello world"
    assert "".join(p["text"] for p in parts if p.get("thought")) == "Think first."
    assert payloads[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert payloads[-1]["usageMetadata"] == {
        "promptTokenCount": 20,
        "candidatesTokenCount": 5,
        "totalTokenCount": 29,
        "thoughtsTokenCount": 4,
    }
    # Round trip: a Gemini client reading these gets back the same text and usage.
    back = gemini.StreamToOpenAI("r")
    again = [c for p in payloads for c in back.feed(p)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in again) == "Hello world"
    assert back.usage.completion_tokens == 9


def test_error_shapes() -> None:
    assert gemini.error_body(429, "rate_limit_exceeded", "slow") == {
        "error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}
    }
    frames = gemini.StreamFromOpenAI("m").error("gone", 502)
    assert json.loads(frames[0].removeprefix(b"data: "))["error"]["status"] == "UNAVAILABLE"


def test_count_tokens_bodies_translate_in_both_forms() -> None:
    contents = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    wrapped = {"generateContentRequest": {"model": "models/g", **contents}}
    expected = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
    assert gemini.count_tokens_to_openai(contents, "g") == expected
    assert gemini.count_tokens_to_openai(wrapped, "g") == expected
    assert gemini.count_tokens_response(7) == {"totalTokens": 7}


def test_reasoning_effort_as_thinking_level_or_budget() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low"}
    assert gemini.request_from_openai(chat, "g")["generationConfig"]["thinkingConfig"] == {
        "thinkingLevel": "LOW",
        "includeThoughts": True,
    }
    assert gemini.request_from_openai(chat, "g", thinking="budget")["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 1024,
        "includeThoughts": True,
    }
    client = {
        "contents": [{"parts": [{"text": "hi"}]}],
        "generationConfig": {"thinkingConfig": {"thinkingLevel": "HIGH"}},
    }
    assert gemini.request_to_openai(client, "g", stream=False)["reasoning_effort"] == "high"
