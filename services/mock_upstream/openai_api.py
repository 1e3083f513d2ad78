"""The OpenAI wire format: chat completions (stream and not), embeddings, images, models, errors."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
import time
import uuid
import zlib
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from services.mock_upstream import content
from services.mock_upstream.exchange import Exchange, open_exchange

MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o3-mini",
    "deepseek-reasoner",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "dall-e-3",
    "gpt-image-1",
)
MODELS_CREATED = 1_700_000_000
FINGERPRINT = "fp_mock0001"

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_denied", None),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}


def error_response(
    status: int,
    message: str,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Response[Any]:
    etype, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    if kind == "invalid_json":
        code = None
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return Response(
        msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers
    )


def bearer(request: Request[Any, Any, Any]) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def sse(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


# --- reading a chat request ---


class ChatInput(msgspec.Struct, kw_only=True):
    texts: list[str]
    messages: int
    images: int
    last_user_text: str | None


def read_messages(messages: Any) -> ChatInput | str:
    """The countable parts of `messages`, or a message saying what is wrong with them."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    texts: list[str] = []
    images = 0
    last_user: str | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in (
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
            "function",
        ):
            return f"messages[{i}] needs a role of system, developer, user, assistant or tool"
        parts = msg.get("content")
        own: list[str] = []
        if isinstance(parts, str):
            own.append(parts)
        elif isinstance(parts, list):
            for j, part in enumerate(parts):
                if not isinstance(part, dict):
                    return f"messages[{i}].content[{j}] must be an object"
                if part.get("type") == "text":
                    own.append(str(part.get("text", "")))
                elif part.get("type") in ("image_url", "input_image"):
                    images += 1
                elif part.get("type") == "input_audio":
                    images += 1
                else:
                    return f"messages[{i}].content[{j}].type {part.get('type')!r} is not supported"
        elif parts is not None:
            return f"messages[{i}].content must be a string or an array"
        calls = msg.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            fn = call.get("function") if isinstance(call, dict) else None
            fn = fn if isinstance(fn, dict) else {}
            own += [str(fn.get("name", "")), str(fn.get("arguments", ""))]
        texts += own
        if msg["role"] == "user":
            last_user = " ".join(own)
        elif i == len(messages) - 1:
            last_user = None
    last = messages[-1]
    return ChatInput(
        texts=texts,
        messages=len(messages),
        images=images,
        last_user_text=last_user if last.get("role") == "user" else None,
    )


def forced_function(tools: list[dict[str, Any]], tool_choice: Any) -> dict[str, Any] | None:
    """The function the model must call given `tool_choice`, or None to let it decide."""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        return next(
            (t.get("function") or {} for t in tools if (t.get("function") or {}).get("name") == name), None
        )
    if tool_choice == "required":
        return tools[0].get("function") or {}
    return None


def chosen_function(
    tools: list[dict[str, Any]], tool_choice: Any, last_user: str | None
) -> dict[str, Any] | None:
    if not tools or tool_choice == "none":
        return None
    forced = forced_function(tools, tool_choice)
    if forced is not None:
        return forced
    if last_user and "weather" in last_user.lower():
        fns = [t.get("function") or {} for t in tools]
        return next((f for f in fns if "weather" in str(f.get("name", "")).lower()), fns[0])
    return None


# --- the model's "decision" ---


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    name: str
    arguments: str


class Choice(msgspec.Struct, kw_only=True):
    index: int
    text: str | None = None
    reasoning: str | None = None
    calls: list[ToolCall] = msgspec.field(default_factory=list)
    finish: str = "stop"
    tokens: int = 0
    reasoning_tokens: int = 0


def decide(
    body: dict[str, Any], model: str, chat: ChatInput, index: int, min_tokens: int, n_calls: int = 1
) -> Choice:
    seed = content.seed_of(model, body.get("messages"), index)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    budget = int(limit) if limit else 1 << 30
    choice = Choice(index=index)
    fn = chosen_function(body.get("tools") or [], body.get("tool_choice"), chat.last_user_text)
    if fn is not None:
        name = str(fn.get("name", "tool"))
        choice.finish = "tool_calls"
        for k in range(max(n_calls, 1)):
            args = json.dumps(content.fake_value(fn.get("parameters") or {}, "", seed + k))
            # The function's name is generated too: it counts against the limit.
            args, cut = content.truncate_to_tokens(
                args, max(budget - choice.tokens - content.count_tokens(name), 0)
            )
            call_id = "call_" + hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()[:24]
            choice.calls.append(ToolCall(id=call_id, name=name, arguments=args))
            choice.tokens += content.count_tokens(args) + content.count_tokens(name)
            if cut:
                choice.finish = "length"
                break
        return choice
    if "reasoner" in model:
        reasoning, _ = content.truncate_to_tokens(content.reasoning_text(seed), budget)
        choice.reasoning = reasoning
        choice.reasoning_tokens = content.count_tokens(reasoning)
        budget -= choice.reasoning_tokens
    fmt = _dict(body.get("response_format"))
    if fmt.get("type") == "json_object":
        text = content.json_reply(seed)
    elif fmt.get("type") == "json_schema":
        text = content.json_reply(seed, _dict(fmt.get("json_schema")).get("schema"))
    else:
        text = content.reply_text(seed, min_tokens)
    stops = body.get("stop")
    stops = [stops] if isinstance(stops, str) else (stops or [])
    hits = [text.find(s) for s in stops if s and s in text]
    if hits:
        text = text[: min(hits)]
    text, cut = content.truncate_to_tokens(text, max(budget, 0))
    choice.text = text
    choice.finish = "length" if cut else "stop"
    choice.tokens = content.count_tokens(text) + choice.reasoning_tokens
    return choice


def validate_chat(body: dict[str, Any]) -> tuple[str, str] | None:
    """(param, message) for the first invalid field, or None."""
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        return "temperature", "Invalid 'temperature': expected a number between 0 and 2."
    if body.get("stream_options") is not None and not body.get("stream"):
        return "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return name, f"Invalid '{name}': integer below minimum value. Expected a value >= 1."
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        return "n", "Invalid 'n': expected an integer between 1 and 128."
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        return "stop", "Invalid 'stop': expected a string or an array of up to 4 strings."
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")
            for t in tools
        )
    ):
        return "tools", "Invalid 'tools': each tool needs a function with a name."
    return None


def usage_of(prompt: int, cached: int, choices: list[Choice]) -> dict[str, Any]:
    completion = sum(c.tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": sum(c.reasoning_tokens for c in choices),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def message_of(choice: Choice) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None, "annotations": []}
    if choice.reasoning is not None:
        msg["reasoning_content"] = choice.reasoning
    if choice.calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in choice.calls
        ]
    return msg


def stream_frames(
    ex: Exchange, cid: str, created: int, choices: list[Choice], usage: dict[str, Any]
) -> list[bytes]:
    include_usage = bool(_dict(ex.body.get("stream_options")).get("include_usage")) and not ex.faults.no_usage

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": ex.model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            payload["usage"] = None
        return sse(payload)

    frames: list[bytes] = []
    for c in choices:
        if c.calls:
            for k, call in enumerate(c.calls):
                opening = {
                    "index": k,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                delta: dict[str, Any] = {"tool_calls": [opening]}
                if k == 0:
                    delta = {"role": "assistant", "content": None, **delta, "refusal": None}
                frames.append(chunk(c.index, delta))
                for piece in content.split_text(call.arguments, ex.faults.chunks):
                    frames.append(
                        chunk(c.index, {"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
                    )
        else:
            frames.append(chunk(c.index, {"role": "assistant", "content": "", "refusal": None}))
            for piece in content.split_text(c.reasoning or "", ex.faults.chunks):
                frames.append(chunk(c.index, {"reasoning_content": piece}))
            for piece in content.split_text(c.text or "", ex.faults.chunks):
                frames.append(chunk(c.index, {"content": piece}))
        frames.append(chunk(c.index, {}, c.finish))
    if include_usage:
        frames.append(
            sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": ex.model,
                    "service_tier": "default",
                    "system_fingerprint": FINGERPRINT,
                    "choices": [],
                    "usage": usage,
                }
            )
        )
    frames.append(DONE)
    return frames


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    opened = await open_exchange(request, dialect="openai", error=error_response, api_key=bearer(request))
    if isinstance(opened, Response):
        return opened
    ex = opened
    bad = validate_chat(ex.body)
    if bad:
        return fail_param(ex, *bad)
    chat = read_messages(ex.body.get("messages"))
    if isinstance(chat, str):
        return fail_param(ex, "messages", chat)
    tools_text = [json.dumps(ex.body["tools"], sort_keys=True)] if ex.body.get("tools") else []
    prompt = content.prompt_tokens(chat.texts + tools_text, chat.messages, chat.images)
    cached = content.cached_tokens(prompt, ex.faults.cached)
    choices = [
        decide(ex.body, ex.model, chat, i, ex.faults.chunks, ex.faults.tool_calls)
        for i in range(ex.body.get("n", 1))
    ]
    usage = usage_of(prompt, cached, choices)
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    if ex.body.get("stream"):
        error_status = ex.faults.error_status or 500
        etype, code = _ERROR_TYPES.get(
            error_status, ("server_error" if error_status >= 500 else "invalid_request_error", None)
        )
        failure = sse(
            {
                "error": {
                    "message": "Injected fault: the model stopped mid-stream.",
                    "type": etype,
                    "param": None,
                    "code": code,
                }
            }
        )
        return ex.stream(stream_frames(ex, cid, created, choices, usage), error_frame=failure)
    payload = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": ex.model,
        "choices": [
            {"index": c.index, "message": message_of(c), "logprobs": None, "finish_reason": c.finish}
            for c in choices
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    if ex.faults.no_usage:
        del payload["usage"]
    return ex.reply(payload)


def fail_param(ex: Exchange, param: str, message: str) -> Response[Any]:
    ex.entry.outcome = "error"
    ex.entry.status = 400
    return error_response(400, message, None, None, param=param)


# --- embeddings ---


def embedding(model: str, item: Any, dims: int) -> list[float]:
    rng = random.Random(content.seed_of(model, item))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


@post("/v1/embeddings", status_code=200)
async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
    opened = await open_exchange(
        request, dialect="openai", error=error_response, api_key=bearer(request), stream=False
    )
    if isinstance(opened, Response):
        return opened
    ex = opened
    raw = ex.body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, (str, list)) for t in raw):
        items = raw
    else:
        return fail_param(ex, "input", "'input' must be a string, an array of strings or of token arrays")
    dims = ex.body.get("dimensions") or (3072 if "large" in ex.model else 1536)
    if not isinstance(dims, int) or not 1 <= dims <= 4096:
        return fail_param(ex, "dimensions", "'dimensions' must be an integer between 1 and 4096")
    as_base64 = ex.body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for i, item in enumerate(items):
        tokens += content.count_tokens(item) if isinstance(item, str) else len(item)
        vec = embedding(ex.model, item, dims)
        value: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_base64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    return ex.reply(
        {
            "object": "list",
            "data": data,
            "model": ex.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


# --- images ---


def tiny_png(seed: int, side: int = 8) -> bytes:
    """A valid `side`x`side` single-colour PNG whose colour depends on the seed."""
    colour = seed.to_bytes(8, "big")[:3]
    rows = b"".join(b"\x00" + colour * side for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@post("/v1/images/generations", status_code=200)
async def images_generations(request: Request[Any, Any, Any]) -> Response[Any]:
    opened = await open_exchange(
        request, dialect="openai", error=error_response, api_key=bearer(request), stream=False
    )
    if isinstance(opened, Response):
        return opened
    ex = opened
    prompt = ex.body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return fail_param(ex, "prompt", "'prompt' must be a non-empty string")
    n = ex.body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        return fail_param(ex, "n", "'n' must be an integer between 1 and 10")
    b64 = ex.body.get("response_format") == "b64_json" or ex.model.startswith("gpt-image")
    data = []
    for i in range(n):
        seed = content.seed_of(ex.model, prompt, i)
        if b64:
            data.append({"b64_json": base64.b64encode(tiny_png(seed)).decode()})
        else:
            data.append({"url": f"{str(request.base_url).rstrip('/')}/_mock/images/{seed:016x}.png"})
    payload: dict[str, Any] = {"created": int(time.time()), "data": data}
    if ex.model.startswith("gpt-image"):
        text = content.count_tokens(prompt)
        payload["usage"] = {
            "input_tokens": text,
            "output_tokens": 272 * n,
            "total_tokens": text + 272 * n,
            "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
        }
    return ex.reply(payload)


@get("/_mock/images/{name:str}", include_in_schema=False)
async def image_file(name: FromPath[str]) -> Response[bytes]:
    try:
        seed = int(name.removesuffix(".png"), 16)
    except ValueError:
        return error_response(404, "no such image", None, None)
    return Response(tiny_png(seed), media_type="image/png")


# --- models ---


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "mock"}


@get("/v1/models/{model_id:str}")
async def get_model(model_id: FromPath[str]) -> Response[Any]:
    if model_id not in MODELS:
        return error_response(404, f"The model '{model_id}' does not exist", None, None, param="model")
    return Response(model_object(model_id))


def openai_models() -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m) for m in MODELS]}


HANDLERS: list[HTTPRouteHandler] = [chat_completions, embeddings, images_generations, image_file, get_model]
