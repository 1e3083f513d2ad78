"""The fake provider speaks the Gemini API well enough for the official `google-genai` SDK."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.mock_upstream.conftest import DROPPED, KEY

Stats = Callable[[], dict[str, Any]]
ASK = "Explain blorptangle briefly."
WEATHER = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="Weather in a city",
            parameters=types.Schema(
                type=types.Type.OBJECT,
                properties={"city": types.Schema(type=types.Type.STRING)},
                required=["city"],
            ),
        )
    ]
)


@pytest.fixture
def client(mock_url: str) -> genai.Client:
    return genai.Client(
        api_key=KEY,
        http_options=types.HttpOptions(base_url=mock_url, retry_options=types.HttpRetryOptions(attempts=1)),
    )


def test_generate_content_with_system_instruction_and_usage(client: genai.Client, stats: Stats) -> None:
    config = types.GenerateContentConfig(system_instruction="Be brief.")
    resp = client.models.generate_content(model="gemini-2.5-flash", contents=ASK, config=config)
    again = client.models.generate_content(model="gemini-2.5-flash", contents=ASK, config=config)
    assert resp.text and resp.text == again.text and "blorptangle" not in resp.text.lower()
    cand = resp.candidates[0]  # type: ignore[index]
    assert cand.finish_reason == types.FinishReason.STOP
    usage = resp.usage_metadata
    assert usage and usage.prompt_token_count and usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert usage.cached_content_token_count is None
    entry = stats()["requests"][0]
    assert entry["api_key"] == KEY and entry["model"] == "gemini-2.5-flash"
    assert "systemInstruction" in entry["body"]  # the SDK speaks camelCase on the wire
    counted = client.models.count_tokens(model="gemini-2.5-flash", contents=ASK)
    assert counted.total_tokens and counted.total_tokens > 3


def test_stream_sse_text_matches_and_usage_last(client: genai.Client, mock_url: str) -> None:
    whole = client.models.generate_content(model="gemini-2.5-flash", contents=ASK)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=ASK))
    assert len(chunks) == 20
    assert "".join(c.text or "" for c in chunks) == whole.text
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert chunks[-1].usage_metadata and chunks[-1].usage_metadata.candidates_token_count == (
        whole.usage_metadata.candidates_token_count
    )  # type: ignore[union-attr]
    # Without alt=sse the stream is one JSON array.
    raw = httpx.post(
        mock_url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        params={"key": KEY},
        json={"contents": [{"role": "user", "parts": [{"text": ASK}]}]},
    )
    assert raw.status_code == 200 and len(raw.json()) == 20


def test_function_call_and_generation_config(client: genai.Client) -> None:
    config = types.GenerateContentConfig(tools=[WEATHER])
    resp = client.models.generate_content(
        model="gemini-2.5-flash", contents="weather in Oslo?", config=config
    )
    calls = resp.function_calls
    assert calls and calls[0].name == "get_weather" and calls[0].args == {"city": "Paris"}
    streamed = [
        c
        for c in client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="weather in Oslo?", config=config
        )
        if c.function_calls
    ]
    assert streamed and streamed[0].function_calls[0].name == "get_weather"  # type: ignore[index]
    forced = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=ASK,
        config=types.GenerateContentConfig(
            tools=[WEATHER],
            tool_config=types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.ANY)
            ),
        ),
    )
    assert forced.function_calls

    short = client.models.generate_content(
        model="gemini-2.5-flash", contents=ASK, config=types.GenerateContentConfig(max_output_tokens=5)
    )
    assert short.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS  # type: ignore[index]
    assert short.usage_metadata and short.usage_metadata.candidates_token_count <= 5  # type: ignore[operator]
    two = client.models.generate_content(
        model="gemini-2.5-flash", contents=ASK, config=types.GenerateContentConfig(candidate_count=2)
    )
    assert two.candidates and len(two.candidates) == 2
    as_json = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=ASK,
        config=types.GenerateContentConfig(response_mime_type="application/json"),
    )
    assert as_json.parsed is None and isinstance(__import__("json").loads(as_json.text or ""), dict)
    cached = client.models.generate_content(model="gemini-2.5-flash", contents="lorem " * 1500)
    assert cached.usage_metadata and (cached.usage_metadata.cached_content_token_count or 0) >= 1024


def test_errors_in_google_shape(client: genai.Client, mock_url: str) -> None:
    with pytest.raises(errors.ClientError) as limited:
        client.models.generate_content(model="gemini-2.5-flash@fail429", contents=ASK)
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(errors.ServerError) as broken:
        client.models.generate_content(
            model="gemini-2.5-flash",
            contents=ASK,
            config=types.GenerateContentConfig(
                http_options=types.HttpOptions(headers={"x-mock-fault": "status=503"})
            ),
        )
    assert broken.value.code == 503
    anonymous = httpx.post(
        mock_url + "/v1beta/models/gemini-2.5-flash:generateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    assert anonymous.status_code == 403 and anonymous.json()["error"]["status"] == "PERMISSION_DENIED"
    empty = httpx.post(
        mock_url + "/v1beta/models/gemini-2.5-flash:generateContent",
        params={"key": KEY},
        json={"contents": []},
    )
    assert empty.status_code == 400 and empty.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_disconnect_mid_stream(client: genai.Client, stats: Stats) -> None:
    got = []
    with pytest.raises((*DROPPED, errors.APIError)):
        for chunk in client.models.generate_content_stream(
            model="gemini-2.5-flash@disconnect_after=2", contents=ASK
        ):
            got.append(chunk)
    assert len(got) == 2
    assert stats()["requests"][0]["outcome"] == "disconnected"


def test_no_usage_fault_drops_usage_metadata(client: genai.Client) -> None:
    resp = client.models.generate_content(model="gemini-2.5-flash@no_usage=1", contents=ASK)
    assert resp.text and resp.usage_metadata is None
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash@no_usage=1", contents=ASK))
    assert all(c.usage_metadata is None for c in chunks)


def test_error_inside_a_stream(mock_url: str) -> None:
    raw = httpx.post(
        mock_url + "/v1beta/models/gemini-2.5-flash@error_after=2:streamGenerateContent",
        params={"alt": "sse", "key": KEY},
        json={"contents": [{"parts": [{"text": ASK}]}]},
    ).text
    frames = [f for f in raw.split("\r\n\r\n") if f]
    assert len(frames) == 3
    assert json.loads(frames[-1].removeprefix("data: ")) == {
        "error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}
    }


def test_models_are_listed_in_googles_shape(client: genai.Client) -> None:
    names = [m.name for m in client.models.list()]
    assert "models/gemini-2.5-flash" in names


def test_thoughts_when_asked_and_counted_always(client: genai.Client) -> None:
    shown = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW, include_thoughts=True)
    )
    resp = client.models.generate_content(model="gemini-3-flash", contents=ASK, config=shown)
    parts = resp.candidates[0].content.parts  # type: ignore[index,union-attr]
    assert [bool(p.thought) for p in parts] == [True, False]  # type: ignore[union-attr]
    assert resp.usage_metadata and resp.usage_metadata.thoughts_token_count
    hidden = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=ASK,
        config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=1024)),
    )
    assert [bool(p.thought) for p in hidden.candidates[0].content.parts] == [False]  # type: ignore[index,union-attr]
    assert hidden.usage_metadata and hidden.usage_metadata.thoughts_token_count
    with pytest.raises(errors.ClientError, match="only one of"):
        client.models.generate_content(
            model="gemini-3-flash",
            contents=ASK,
            config=types.GenerateContentConfig(
                thinking_config=types.ThinkingConfig(
                    thinking_budget=1024, thinking_level=types.ThinkingLevel.LOW
                )
            ),
        )
