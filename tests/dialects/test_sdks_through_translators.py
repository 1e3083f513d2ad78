"""Every client dialect x every upstream dialect, with the official SDKs as clients and the mock as upstream,
through the translators chained as the gateway chains them (tests/dialects/relay.py): text, streams, tools
and usage arrive intact."""

from __future__ import annotations

import json
from typing import Any

import anthropic as anthropic_sdk
import httpx
import openai as openai_sdk
import pytest
from google import genai
from google.genai import types

UPSTREAMS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
CLIENTS = ("openai", "responses", "anthropic", "gemini")
QUESTION = "Tell me about the harbour."
WEATHER_Q = "What's the weather in Paris?"
WEATHER_SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}


class Answer:
    def __init__(self, text: str, prompt: int, completion: int, cached: int = 0) -> None:
        self.text, self.prompt, self.completion, self.cached = text, prompt, completion, cached


def ask_openai(base: str, model: str, stream: bool, extra: dict[str, Any] | None = None) -> Answer:
    client = openai_sdk.OpenAI(api_key="k", base_url=base + "/v1", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, extra_body=extra)  # type: ignore[arg-type]
        assert r.usage and r.usage.prompt_tokens_details
        return Answer(
            r.choices[0].message.content or "",
            r.usage.prompt_tokens,
            r.usage.completion_tokens,
            r.usage.prompt_tokens_details.cached_tokens or 0,
        )
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
            extra_body=extra,
        )
    )
    usage = chunks[-1].usage
    assert usage and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return Answer(text, usage.prompt_tokens, usage.completion_tokens)


def ask_responses(base: str, model: str, stream: bool) -> Answer:
    client = openai_sdk.OpenAI(api_key="k", base_url=base + "/v1", max_retries=0)
    if not stream:
        r = client.responses.create(model=model, input=QUESTION, instructions="Be helpful.")
        assert r.status == "completed" and r.usage
        return Answer(r.output_text, r.usage.input_tokens, r.usage.output_tokens)
    with client.responses.stream(model=model, input=QUESTION, instructions="Be helpful.") as events:
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        final = events.get_final_response()
    assert final.usage and final.output_text == "".join(deltas)
    return Answer(final.output_text, final.usage.input_tokens, final.usage.output_tokens)


def ask_anthropic(base: str, model: str, stream: bool) -> Answer:
    client = anthropic_sdk.Anthropic(api_key="k", base_url=base, max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    if not stream:
        m = client.messages.create(model=model, max_tokens=500, system="Be helpful.", messages=messages)  # type: ignore[arg-type]
    else:
        with client.messages.stream(
            model=model, max_tokens=500, system="Be helpful.", messages=messages
        ) as s:  # type: ignore[arg-type]
            m = s.get_final_message()
    assert m.stop_reason == "end_turn"
    text = "".join(b.text for b in m.content if b.type == "text")
    return Answer(text, m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0), m.usage.output_tokens)


def ask_gemini(base: str, model: str, stream: bool) -> Answer:
    client = genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=base, retry_options=types.HttpRetryOptions(attempts=1)),
    )
    config = types.GenerateContentConfig(system_instruction="Be helpful.")
    if not stream:
        r = client.models.generate_content(model=model, contents=QUESTION, config=config)
        u = r.usage_metadata
        assert u and u.prompt_token_count
        return Answer(r.text or "", u.prompt_token_count, u.candidates_token_count or 0)
    chunks = list(client.models.generate_content_stream(model=model, contents=QUESTION, config=config))
    u = chunks[-1].usage_metadata
    assert u and u.prompt_token_count
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    return Answer("".join(c.text or "" for c in chunks), u.prompt_token_count, u.candidates_token_count or 0)


ASK = {"openai": ask_openai, "responses": ask_responses, "anthropic": ask_anthropic, "gemini": ask_gemini}


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", CLIENTS)
def test_text_streamed_and_not_agree_with_usage(relay_url: str, client: str, upstream: str) -> None:
    base = f"{relay_url}/{upstream}"
    whole = ASK[client](base, UPSTREAMS[upstream], False)  # type: ignore[operator]
    streamed = ASK[client](base, UPSTREAMS[upstream], True)  # type: ignore[operator]
    assert whole.text and whole.text == streamed.text
    assert "harbour" not in whole.text.lower()
    assert whole.prompt > 5 and whole.completion >= 24
    assert (streamed.prompt, streamed.completion) == (whole.prompt, whole.completion)


Call = tuple[str | None, str, dict[str, Any]]  # id, name, arguments


def call_openai(base: str, model: str, stream: bool) -> list[Call]:
    client = openai_sdk.OpenAI(api_key="k", base_url=base + "/v1", max_retries=0)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER_SCHEMA,
            },
        }
    ]
    messages = [{"role": "user", "content": WEATHER_Q}]
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, tools=tools)  # type: ignore[arg-type]
        assert r.choices[0].finish_reason == "tool_calls"
        return [
            (tc.id, tc.function.name, json.loads(tc.function.arguments))  # type: ignore[union-attr]
            for tc in r.choices[0].message.tool_calls or []
        ]
    calls: dict[int, list[Any]] = {}
    finish = None
    for c in client.chat.completions.create(model=model, messages=messages, tools=tools, stream=True):  # type: ignore[arg-type]
        for ch in c.choices:
            for tc in ch.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, [None, "", ""])
                slot[0] = tc.id or slot[0]
                slot[1] += tc.function.name or "" if tc.function else ""
                slot[2] += tc.function.arguments or "" if tc.function else ""
            finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    return [(i, n, json.loads(a)) for _, (i, n, a) in sorted(calls.items())]


def call_responses(base: str, model: str, stream: bool) -> list[Call]:
    client = openai_sdk.OpenAI(api_key="k", base_url=base + "/v1", max_retries=0)
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": WEATHER_SCHEMA,
        }
    ]
    if not stream:
        r = client.responses.create(model=model, input=WEATHER_Q, tools=tools)  # type: ignore[arg-type]
    else:
        with client.responses.stream(model=model, input=WEATHER_Q, tools=tools) as s:  # type: ignore[arg-type]
            for _ in s:
                pass
            r = s.get_final_response()
    return [(o.call_id, o.name, json.loads(o.arguments)) for o in r.output if o.type == "function_call"]


def call_anthropic(base: str, model: str, stream: bool) -> list[Call]:
    client = anthropic_sdk.Anthropic(api_key="k", base_url=base, max_retries=0)
    kw: dict[str, Any] = {
        "model": model,
        "max_tokens": 300,
        "messages": [{"role": "user", "content": WEATHER_Q}],
        "tools": [
            {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_SCHEMA}
        ],
    }
    if not stream:
        m = client.messages.create(**kw)
    else:
        with client.messages.stream(**kw) as s:
            m = s.get_final_message()
    assert m.stop_reason == "tool_use"
    return [(b.id, b.name, b.input) for b in m.content if b.type == "tool_use"]  # type: ignore[misc]


def call_gemini(base: str, model: str, stream: bool) -> list[Call]:
    client = genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=base, retry_options=types.HttpRetryOptions(attempts=1)),
    )
    config = types.GenerateContentConfig(
        tools=[
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name="get_weather",
                        description="Weather in a city",
                        parameters_json_schema=WEATHER_SCHEMA,
                    )
                ]
            )
        ]
    )
    if not stream:
        calls = (
            client.models.generate_content(model=model, contents=WEATHER_Q, config=config).function_calls
            or []
        )
    else:
        calls = [
            fc
            for c in client.models.generate_content_stream(model=model, contents=WEATHER_Q, config=config)
            for fc in c.function_calls or []
        ]
    return [(fc.id, str(fc.name), dict(fc.args or {})) for fc in calls]


CALL = {
    "openai": call_openai,
    "responses": call_responses,
    "anthropic": call_anthropic,
    "gemini": call_gemini,
}


@pytest.mark.parametrize("parallel", [1, 2], ids=["one-call", "two-calls"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", CLIENTS)
def test_tool_calls_cross_every_pair(
    relay_url: str, client: str, upstream: str, stream: bool, parallel: int
) -> None:
    # `@tool_calls=N` asks the mock for N calls at once (see services/mock_upstream/faults.py).
    model = UPSTREAMS[upstream] + (f"@tool_calls={parallel}" if parallel > 1 else "")
    calls = CALL[client](f"{relay_url}/{upstream}", model, stream)  # type: ignore[operator]
    assert [(name, args) for _, name, args in calls] == [("get_weather", {"location": "Paris"})] * parallel
    ids = [i for i, _, _ in calls if i]
    assert len(set(ids)) == len(ids)
    if client != "gemini":  # Gemini's own calls may carry no id; every other dialect ties results by id
        assert len(ids) == parallel


def test_a_field_the_upstream_cannot_express_is_a_400_naming_it(relay_url: str) -> None:
    client = openai_sdk.OpenAI(api_key="k", base_url=f"{relay_url}/anthropic/v1", max_retries=0)
    with pytest.raises(openai_sdk.BadRequestError) as refused:
        client.chat.completions.create(
            model="claude-haiku-4-5", n=2, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.body["param"] == "n"  # type: ignore[index]
    assert "cannot be sent to a anthropic upstream" in refused.value.message


def test_cached_tokens_survive_every_translation(relay_url: str) -> None:
    long = "lorem " * 1500
    for upstream, model in UPSTREAMS.items():
        client = openai_sdk.OpenAI(api_key="k", base_url=f"{relay_url}/{upstream}/v1", max_retries=0)
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": long}])
        assert r.usage and r.usage.prompt_tokens_details
        cached = r.usage.prompt_tokens_details.cached_tokens or 0
        assert 1024 <= cached <= r.usage.prompt_tokens, upstream


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def last_upstream_body(mock_process: Any) -> dict[str, Any]:
    return httpx.get(mock_process.url + "/_mock/stats").json()["requests"][-1]["body"]  # type: ignore[no-any-return]


def test_what_each_upstream_receives_from_an_openai_client(relay_url: str, mock_process: Any) -> None:
    """System prompt, image, stop sequence, limits and sampling arrive in each upstream's own words."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
    ]
    seen = {}
    for upstream, model in UPSTREAMS.items():
        client = openai_sdk.OpenAI(api_key="k", base_url=f"{relay_url}/{upstream}/v1", max_retries=0)
        r = client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=7,
            stop=["zzz"],  # type: ignore[arg-type]
            temperature=0.5,
            top_p=0.9,
        )
        assert r.choices[0].finish_reason == "length" and r.usage and r.usage.completion_tokens <= 7
        assert r.usage.prompt_tokens > 85  # the image is counted
        seen[upstream] = last_upstream_body(mock_process)
    assert seen["openai"]["messages"] == messages
    assert seen["anthropic"]["system"] == "Be brief."
    assert seen["anthropic"]["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    assert (seen["anthropic"]["max_tokens"], seen["anthropic"]["stop_sequences"]) == (7, ["zzz"])
    assert seen["gemini"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert seen["gemini"]["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert seen["gemini"]["generationConfig"] == {
        "maxOutputTokens": 7,
        "temperature": 0.5,
        "topP": 0.9,
        "stopSequences": ["zzz"],
    }


def test_an_openai_upstream_receives_anthropic_and_gemini_clients_in_openai_words(
    relay_url: str, mock_process: Any
) -> None:
    anthropic_sdk.Anthropic(api_key="k", base_url=f"{relay_url}/openai", max_retries=0).messages.create(
        model="gpt-4o-mini",
        max_tokens=9,
        system="Be brief.",
        stop_sequences=["zzz"],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                ],
            }
        ],
    )
    body = last_upstream_body(mock_process)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PNG}"},
    }
    assert (body["max_completion_tokens"], body["stop"]) == (9, ["zzz"])

    gclient = genai.Client(
        api_key="k",
        http_options=types.HttpOptions(
            base_url=f"{relay_url}/openai", retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    gclient.models.generate_content(
        model="gpt-4o-mini",
        contents=[
            types.Part.from_text(text=QUESTION),
            types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png"),
        ],
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=9),
    )
    body = last_upstream_body(mock_process)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert body["max_completion_tokens"] == 9 and not body.get("stream")


def test_reasoning_crosses_dialects(relay_url: str) -> None:
    ask = [{"role": "user", "content": QUESTION}]
    # An OpenAI-style reasoner upstream, read by Anthropic, Gemini and Responses clients.
    base = f"{relay_url}/openai"
    msg = anthropic_sdk.Anthropic(api_key="k", base_url=base, max_retries=0).messages.create(
        model="deepseek-reasoner", max_tokens=300, messages=ask
    )  # type: ignore[arg-type]
    assert [b.type for b in msg.content] == ["thinking", "text"]
    with anthropic_sdk.Anthropic(api_key="k", base_url=base, max_retries=0).messages.stream(
        model="deepseek-reasoner", max_tokens=300, messages=ask
    ) as s:  # type: ignore[arg-type]
        streamed = s.get_final_message()
    assert streamed.content[0].thinking == msg.content[0].thinking  # type: ignore[union-attr]
    gclient = genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=base, retry_options=types.HttpRetryOptions(attempts=1)),
    )
    parts = (
        gclient.models.generate_content(model="deepseek-reasoner", contents=QUESTION)
        .candidates[0]
        .content.parts
    )  # type: ignore[index,union-attr]
    assert [bool(p.thought) for p in parts] == [True, False]  # type: ignore[union-attr]
    resp = openai_sdk.OpenAI(api_key="k", base_url=base + "/v1", max_retries=0).responses.create(
        model="deepseek-reasoner", input=QUESTION
    )
    assert [o.type for o in resp.output] == ["reasoning", "message"]
    assert resp.usage and resp.usage.output_tokens_details.reasoning_tokens > 0
    # reasoning_effort from an OpenAI client turns Anthropic's thinking on; its thinking comes back.
    r = openai_sdk.OpenAI(
        api_key="k", base_url=f"{relay_url}/anthropic/v1", max_retries=0
    ).chat.completions.create(model="claude-sonnet-4-6", messages=ask, reasoning_effort="low")  # type: ignore[arg-type]
    assert (r.choices[0].message.model_extra or {}).get("reasoning_content")


def _stream_fails(client: str, base: str, model: str) -> str:
    """Stream from a failing upstream; what the client saw: the exception class or the final event."""
    ask = [{"role": "user", "content": QUESTION}]
    try:
        if client == "openai":
            list(
                openai_sdk.OpenAI(api_key="k", base_url=base + "/v1", max_retries=0).chat.completions.create(
                    model=model, messages=ask, stream=True
                )
            )  # type: ignore[arg-type]
        elif client == "responses":
            events = list(
                openai_sdk.OpenAI(api_key="k", base_url=base + "/v1", max_retries=0).responses.create(
                    model=model, input=QUESTION, stream=True
                )
            )
            return events[-1].type
        elif client == "anthropic":
            with anthropic_sdk.Anthropic(api_key="k", base_url=base, max_retries=0).messages.stream(
                model=model, max_tokens=300, messages=ask
            ) as s:  # type: ignore[arg-type]
                list(s)
        else:
            gclient = genai.Client(
                api_key="k",
                http_options=types.HttpOptions(
                    base_url=base, retry_options=types.HttpRetryOptions(attempts=1)
                ),
            )
            list(gclient.models.generate_content_stream(model=model, contents=QUESTION))
    except Exception as exc:
        return type(exc).__name__
    return "no error"


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", CLIENTS)
def test_an_upstream_error_mid_stream_reaches_every_client_as_an_error(
    relay_url: str, client: str, upstream: str
) -> None:
    seen = _stream_fails(client, f"{relay_url}/{upstream}", UPSTREAMS[upstream] + "@error_after=3")
    expected = {
        "openai": "APIError",
        "responses": "response.failed",
        "anthropic": "APIStatusError",
        "gemini": "ServerError",
    }
    assert seen == expected[client]


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
def test_json_mode_reaches_every_upstream(relay_url: str, upstream: str) -> None:
    client = openai_sdk.OpenAI(api_key="k", base_url=f"{relay_url}/{upstream}/v1", max_retries=0)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = client.chat.completions.create(
        model=UPSTREAMS[upstream],
        messages=[{"role": "user", "content": QUESTION}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    assert json.loads(r.choices[0].message.content or "") == {"city": "Paris"}


def test_reasoning_effort_brings_gemini_thoughts_back_as_reasoning_content(relay_url: str) -> None:
    client = openai_sdk.OpenAI(api_key="k", base_url=f"{relay_url}/gemini/v1", max_retries=0)
    r = client.chat.completions.create(
        model="gemini-3-flash", messages=[{"role": "user", "content": QUESTION}], reasoning_effort="low"
    )
    assert (r.choices[0].message.model_extra or {}).get("reasoning_content")
    assert (
        r.usage and r.usage.completion_tokens_details and r.usage.completion_tokens_details.reasoning_tokens
    )
