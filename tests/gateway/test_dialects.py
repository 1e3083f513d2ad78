"""Every client dialect x every channel dialect through a real gateway process, with the official SDKs
(openai for Chat Completions and Responses, anthropic, google-genai) as clients and the mock as every
upstream:
text streamed and not, tool calls, and one usage.recorded per request with the tokens the client was told."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import anthropic as anthropic_sdk
import httpx
import openai as openai_sdk
import pytest
from google import genai
from google.genai import types

from shared import catalog as cat
from shared import crypto
from tests import procs
from tests.gateway.conftest import MOCK_KEY, World, model, usage_events_of_key, use_catalog

# public model -> (channel provider, the mock's model name for it)
UPSTREAMS = {
    "via-openai": ("openai", "gpt-4o-mini"),
    "via-anthropic": ("anthropic", "claude-haiku-4-5"),
    "via-gemini": ("gemini", "gemini-2.5-flash"),
}
CLIENTS = ("openai", "responses", "anthropic", "gemini")
QUESTION = "Tell me about the harbour."
WEATHER_SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}


def channels(world: World) -> list[cat.Channel]:
    out = []
    for public, (provider, upstream_model) in UPSTREAMS.items():
        base = f"{world.mock.url}/v1" if provider == "openai" else world.mock.url
        out.append(
            cat.Channel(
                id=f"ch-{provider}",
                name=provider,
                provider=provider,
                base_url=base,
                api_keys_enc=(crypto.seal(MOCK_KEY, world.common.secret_key),),
                models=(public,),
                model_map={public: upstream_model},
            )
        )
    return out


@pytest.fixture
async def dialect_world(world: World, gateways: list[procs.ServiceProcess]) -> World:
    await use_catalog(world, gateways, channels(world), [model(name) for name in UPSTREAMS])
    return world


class Seen:
    def __init__(self, text: str, completion: int, tool: tuple[str, dict[str, Any]] | None = None) -> None:
        self.text, self.completion, self.tool = text, completion, tool


def ask(client: str, base: str, key: str, rid: str, model_name: str, stream: bool, tools: bool) -> Seen:
    headers = {"x-request-id": rid}
    question = "What's the weather in Paris?" if tools else QUESTION
    if client == "openai":
        oc = openai_sdk.OpenAI(api_key=key, base_url=base + "/v1", max_retries=0, default_headers=headers)
        kw: dict[str, Any] = {"model": model_name, "messages": [{"role": "user", "content": question}]}
        if tools:
            kw["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather",
                        "parameters": WEATHER_SCHEMA,
                    },
                }
            ]
        if not stream:
            r = oc.chat.completions.create(**kw)
            msg = r.choices[0].message
            call = msg.tool_calls[0].function if msg.tool_calls else None  # type: ignore[union-attr]
            return Seen(
                msg.content or "",
                r.usage.completion_tokens if r.usage else -1,
                (call.name, json.loads(call.arguments)) if call else None,
            )
        text, name, args, completion = "", "", "", -1
        for c in oc.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
            if c.usage:
                completion = c.usage.completion_tokens
            for ch in c.choices:
                text += ch.delta.content or ""
                for tc in ch.delta.tool_calls or ():
                    name += (tc.function.name or "") if tc.function else ""
                    args += (tc.function.arguments or "") if tc.function else ""
        return Seen(text, completion, (name, json.loads(args)) if name else None)
    if client == "responses":
        oc = openai_sdk.OpenAI(api_key=key, base_url=base + "/v1", max_retries=0, default_headers=headers)
        rkw: dict[str, Any] = {"model": model_name, "input": question}
        if tools:
            rkw["tools"] = [
                {
                    "type": "function",
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": WEATHER_SCHEMA,
                }
            ]
        if not stream:
            r2 = oc.responses.create(**rkw)
        else:
            with oc.responses.stream(**rkw) as events:
                for _ in events:
                    pass
                r2 = events.get_final_response()
        fc = next((o for o in r2.output if o.type == "function_call"), None)
        return Seen(
            r2.output_text,
            r2.usage.output_tokens if r2.usage else -1,
            (fc.name, json.loads(fc.arguments)) if fc else None,
        )  # type: ignore[union-attr]
    if client == "anthropic":
        ac = anthropic_sdk.Anthropic(api_key=key, base_url=base, max_retries=0, default_headers=headers)
        akw: dict[str, Any] = {
            "model": model_name,
            "max_tokens": 300,
            "messages": [{"role": "user", "content": question}],
        }
        if tools:
            akw["tools"] = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
        if not stream:
            m = ac.messages.create(**akw)
        else:
            with ac.messages.stream(**akw) as s:
                m = s.get_final_message()
        use = next((b for b in m.content if b.type == "tool_use"), None)
        return Seen(
            "".join(b.text for b in m.content if b.type == "text"),
            m.usage.output_tokens,
            (use.name, dict(use.input)) if use else None,
        )  # type: ignore[union-attr,arg-type]
    gc = genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=base, headers=headers, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    config = types.GenerateContentConfig()
    if tools:
        config = types.GenerateContentConfig(
            tools=[
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name="get_weather", description="Weather", parameters_json_schema=WEATHER_SCHEMA
                        )
                    ]
                )
            ],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
    if not stream:
        responses = [gc.models.generate_content(model=model_name, contents=question, config=config)]
    else:
        responses = list(gc.models.generate_content_stream(model=model_name, contents=question, config=config))
    text = "".join(r.text or "" for r in responses if not r.function_calls)
    calls = [fc for r in responses for fc in (r.function_calls or ())]
    u = responses[-1].usage_metadata
    return Seen(
        text,
        (u.candidates_token_count or 0) if u else -1,
        (calls[0].name or "", dict(calls[0].args or {})) if calls else None,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", CLIENTS)
async def test_text_reaches_every_client_from_every_upstream_and_is_recorded(
    dialect_world: World, gateways: list[procs.ServiceProcess], client: str, upstream: str, stream: bool
) -> None:
    secret, snap = await dialect_world.add_key()
    rid = "rid-" + secrets.token_hex(8)
    seen = await asyncio.to_thread(ask, client, gateways[0].url, secret, rid, upstream, stream, False)
    assert seen.text and seen.completion > 0
    [event] = await usage_events_of_key(dialect_world.res, snap.key_id)
    assert event.request_id != rid  # the client's id is echoed, never the request's own
    assert event.dialect == client and event.upstream_dialect == UPSTREAMS[upstream][0]
    assert event.status == 200 and event.model == upstream and event.stream is stream
    assert event.completion_tokens == seen.completion and event.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", CLIENTS)
async def test_tool_calls_cross_every_dialect_pair(
    dialect_world: World, gateways: list[procs.ServiceProcess], client: str, upstream: str, stream: bool
) -> None:
    secret, _ = await dialect_world.add_key()
    rid = "rid-" + secrets.token_hex(8)
    seen = await asyncio.to_thread(ask, client, gateways[1].url, secret, rid, upstream, stream, True)
    assert seen.tool is not None, seen.text
    name, args = seen.tool
    assert name == "get_weather" and isinstance(args.get("location"), str) and args["location"]


async def test_anthropic_and_gemini_errors_come_in_their_own_shape(
    dialect_world: World, gateways: list[procs.ServiceProcess]
) -> None:
    ac = anthropic_sdk.Anthropic(api_key="fg-wrong", base_url=gateways[0].url, max_retries=0)
    with pytest.raises(anthropic_sdk.AuthenticationError) as a_info:
        await asyncio.to_thread(
            ac.messages.create,
            model="via-openai",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert a_info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    gc = genai.Client(
        api_key="fg-wrong",
        http_options=types.HttpOptions(base_url=gateways[0].url, retry_options=types.HttpRetryOptions(attempts=1)),
    )
    with pytest.raises(genai.errors.ClientError) as g_info:
        await asyncio.to_thread(gc.models.generate_content, model="via-openai", contents="hi")
    assert g_info.value.code == 401 and g_info.value.status == "UNAUTHENTICATED"


async def test_anthropic_count_tokens(dialect_world: World, gateways: list[procs.ServiceProcess]) -> None:
    secret, _ = await dialect_world.add_key()
    ac = anthropic_sdk.Anthropic(api_key=secret, base_url=gateways[0].url, max_retries=0)
    short = await asyncio.to_thread(
        ac.messages.count_tokens, model="via-anthropic", messages=[{"role": "user", "content": "hi"}]
    )
    long = await asyncio.to_thread(
        ac.messages.count_tokens,
        model="via-anthropic",
        messages=[{"role": "user", "content": "hello there, " * 50}],
    )
    assert 0 < short.input_tokens < long.input_tokens


async def test_a_field_the_channel_cannot_express_is_a_400_naming_it(
    dialect_world: World, gateways: list[procs.ServiceProcess]
) -> None:
    secret, _ = await dialect_world.add_key()
    oc = openai_sdk.OpenAI(api_key=secret, base_url=gateways[0].url + "/v1", max_retries=0)
    with pytest.raises(openai_sdk.BadRequestError) as info:
        await asyncio.to_thread(
            oc.chat.completions.create,
            model="via-anthropic",
            messages=[{"role": "user", "content": "hi"}],
            logprobs=True,
        )
    assert info.value.status_code == 400
    assert info.value.body["param"] == "logprobs"  # type: ignore[index]
    # the same request to an OpenAI channel is fine: only the dialect that cannot say it refuses
    ok = await asyncio.to_thread(
        oc.chat.completions.create,
        model="via-openai",
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
    )
    assert ok.choices


async def test_gemini_stream_without_alt_sse_is_a_json_array(
    dialect_world: World, gateways: list[procs.ServiceProcess]
) -> None:
    secret, _ = await dialect_world.add_key()
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(
            f"{gateways[0].url}/v1beta/models/via-openai:streamGenerateContent",
            headers={"x-goog-api-key": secret},
            json={"contents": [{"role": "user", "parts": [{"text": QUESTION}]}]},
        )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    items = r.json()
    assert isinstance(items, list) and len(items) > 1
    text = "".join(p.get("text", "") for i in items for c in i.get("candidates", []) for p in c["content"]["parts"])
    assert text and items[-1]["usageMetadata"]["candidatesTokenCount"] > 0
