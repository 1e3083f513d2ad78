"""Bad input never crashes the mock: every field of a realistic request in each dialect, replaced in turn by a
value of the wrong type, gets an answer (an error in the dialect's shape, or a reply) and never a 500."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.mock_upstream.app import create_app
from services.mock_upstream.config import MockUpstreamSettings
from shared.config import CommonSettings

WRONG: list[Any] = [None, 7, True, "x", [], [7], {}, {"type": "bogus"}]

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
REQUESTS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "openai": (
        "/v1/chat/completions",
        {"authorization": "Bearer k"},
        {
            "model": "gpt-4o",
            "n": 1,
            "max_tokens": 50,
            "stop": ["x"],
            "messages": [
                {"role": "system", "content": "s"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "weather?"},
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "21C"},
                {"role": "user", "content": "weather again"},
            ],
            "tools": [TOOL],
            "tool_choice": "auto",
            "response_format": {"type": "text"},
            "stream_options": {"include_usage": True},
        },
    ),
    "openai json": (
        "/v1/chat/completions",
        {"authorization": "Bearer k"},
        {
            "model": "deepseek-reasoner",
            "max_completion_tokens": 80,
            "messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "n",
                    "schema": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string"},
                            "n": {"type": ["integer", "null"]},
                            "tags": {"type": "array", "items": {"enum": ["a"]}},
                        },
                    },
                },
            },
        },
    ),
    "embeddings": (
        "/v1/embeddings",
        {"authorization": "Bearer k"},
        {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8},
    ),
    "images": (
        "/v1/images/generations",
        {"authorization": "Bearer k"},
        {"model": "dall-e-3", "prompt": "fox", "n": 1, "response_format": "b64_json"},
    ),
    "anthropic": (
        "/v1/messages",
        {"x-api-key": "k", "anthropic-version": "2023-06-01"},
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "system": [{"type": "text", "text": "s"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "21C"}]},
            ],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto"},
            "stop_sequences": ["x"],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ),
    "gemini": (
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {"x-goog-api-key": "k"},
        {
            "contents": [
                {"role": "user", "parts": [{"text": "weather?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 21}}}],
                },
            ],
            "systemInstruction": {"parts": [{"text": "s"}]},
            "generationConfig": {"maxOutputTokens": 50, "stopSequences": ["x"], "candidateCount": 1},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT"}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        },
    ),
}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        yield (*prefix, k)
        yield from paths(v, (*prefix, k))


def mutated(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths(body):
        for wrong in WRONG:
            candidate = copy.deepcopy(body)
            target: Any = candidate
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = wrong
            yield f"{'.'.join(map(str, path))}={wrong!r}", candidate


@pytest.mark.parametrize("dialect", list(REQUESTS))
async def test_no_wrongly_typed_field_makes_the_mock_fail(dialect: str) -> None:
    path, headers, body = REQUESTS[dialect]
    app = create_app(MockUpstreamSettings(), CommonSettings())
    failures = []
    async with AsyncTestClient(app) as client:
        # stream_options is only allowed on a stream (as OpenAI has it)
        base = {**body, "stream": True} if "stream_options" in body else body
        assert (await client.post(path, headers=headers, json=base)).status_code == 200
        for label, candidate in mutated(body):
            for stream in (False, True):
                r = await client.post(
                    path, headers=headers, json={**candidate, "stream": True} if stream else candidate
                )
                if r.status_code >= 500:
                    failures.append(f"{label} stream={stream}: {r.status_code} {r.text[:120]}")
                elif r.status_code >= 400:
                    assert "error" in r.json(), label
    assert failures == []
