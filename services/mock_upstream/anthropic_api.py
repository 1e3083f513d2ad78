"""The Anthropic Messages wire format: messages (stream and not), tool use, thinking, count_tokens, models,
errors."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.handlers import HTTPRouteHandler

from services.mock_upstream import content
from services.mock_upstream.exchange import Exchange, fail, open_exchange

MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7", "claude-sonnet-4-5")
# Anthropic refuses a call without a version header; a gateway must send one.
VERSION_REQUIRED = "anthropic-version: header is required"
SAMPLING_REMOVED_IN = "2026-10-21"
# What Claude says before it calls a tool when it is free to choose (a fixed phrase: never the prompt).
TOOL_PREAMBLE = "Let me look that up."

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    etype = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


def error_response(
    status: int, message: str, kind: str | None = None, headers: dict[str, str] | None = None
) -> Response[Any]:
    if kind == "auth":
        message = "invalid x-api-key"
    return Response(
        msgspec.json.encode(error_body(status, message)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def api_key(request: Request[Any, Any, Any]) -> str | None:
    """`x-api-key`, or a Bearer token: newer SDKs (anthropic 2.x) send `Authorization: Bearer` instead."""
    if request.headers.get("x-api-key"):
        return request.headers["x-api-key"]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"


class PromptParts(msgspec.Struct, kw_only=True):
    texts: list[str]
    messages: int
    images: int
    ask_weather: bool


def read_prompt(body: dict[str, Any]) -> PromptParts | str:
    """The countable parts of the request, or what is wrong with it."""
    texts: list[str] = []
    images = 0
    system = body.get("system")
    if isinstance(system, str):
        texts.append(system)
    elif isinstance(system, list):
        texts += [str(b.get("text", "")) for b in system if isinstance(b, dict)]
    elif system is not None:
        return "system: Input should be a valid string or list of text blocks"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    last_user_text = ""
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        blocks = msg.get("content")
        if isinstance(blocks, str):
            blocks = [{"type": "text", "text": blocks}]
        if not isinstance(blocks, list):
            return f"messages.{i}.content: Input should be a valid list"
        own: list[str] = []
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                own.append(str(block.get("text", "")))
            elif kind in ("image", "document"):
                images += 1
            elif kind == "tool_use":
                own += [str(block.get("name", "")), json.dumps(block.get("input", {}))]
            elif kind == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    own.append(inner)
                elif isinstance(inner, list):
                    own += [str(b.get("text", "")) for b in inner if isinstance(b, dict)]
            elif kind in ("thinking", "redacted_thinking"):
                continue
            else:
                return f"messages.{i}.content.{j}.type: unknown content block type {kind!r}"
        texts += own
        if msg["role"] == "user":
            last_user_text = (
                " ".join(own)
                if not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)
                else ""
            )
    asks = messages[-1].get("role") == "user" and "weather" in last_user_text.lower()
    return PromptParts(texts=texts, messages=len(messages), images=images, ask_weather=asks)


class Block(msgspec.Struct, kw_only=True):
    kind: str  # text | tool_use | thinking
    text: str = ""
    tool_id: str = ""
    name: str = ""
    input_json: str = ""


def chosen_tool(body: dict[str, Any], parts: PromptParts) -> tuple[dict[str, Any] | None, bool]:
    """The tool to call and whether the model was forced to (then it says nothing before the call)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    raw_choice = body.get("tool_choice")
    choice: dict[str, Any] = raw_choice if isinstance(raw_choice, dict) else {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None, False
    if choice.get("type") == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), None), True
    if choice.get("type") == "any":
        return tools[0], True
    if parts.ask_weather:
        return next((t for t in tools if "weather" in t["name"].lower()), tools[0]), False
    return None, False


def decide(
    body: dict[str, Any], model: str, parts: PromptParts, min_tokens: int, n_calls: int = 1
) -> tuple[list[Block], str, str | None, int]:
    """(blocks, stop_reason, stop_sequence, output_tokens)."""
    seed = content.seed_of(model, body.get("system"), body.get("messages"))
    budget = int(body["max_tokens"])
    blocks: list[Block] = []
    used = 0
    raw_thinking = body.get("thinking")
    thinking: dict[str, Any] = raw_thinking if isinstance(raw_thinking, dict) else {}
    if thinking.get("type") in ("enabled", "adaptive"):
        text, _ = content.truncate_to_tokens(content.reasoning_text(seed), budget)
        blocks.append(Block(kind="thinking", text=text))
        used += content.count_tokens(text)
    tool, forced = chosen_tool(body, parts)
    if tool is not None:
        if not forced:
            blocks.append(Block(kind="text", text=TOOL_PREAMBLE))
            used += content.count_tokens(TOOL_PREAMBLE)
        for k in range(max(n_calls, 1)):
            args = json.dumps(content.fake_value(tool.get("input_schema") or {}, "", seed + k))
            args, cut = content.truncate_to_tokens(args, max(budget - used, 0))
            tool_id = "toolu_" + hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()[:24]
            blocks.append(Block(kind="tool_use", tool_id=tool_id, name=tool["name"], input_json=args))
            used += content.count_tokens(args)
            if cut:
                return blocks, "max_tokens", None, used
        return blocks, "tool_use", None, used
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        text = content.json_reply(seed, fmt.get("schema"))
    else:
        text = content.reply_text(seed, min_tokens)
    stop_sequence = None
    hits = sorted((text.find(s), s) for s in body.get("stop_sequences") or [] if s and s in text)
    if hits:
        text, stop_sequence = text[: hits[0][0]], hits[0][1]
    text, cut = content.truncate_to_tokens(text, max(budget - used, 0))
    blocks.append(Block(kind="text", text=text))
    used += content.count_tokens(text)
    if cut:
        return blocks, "max_tokens", None, used
    return blocks, "stop_sequence" if stop_sequence else "end_turn", stop_sequence, used


def block_json(b: Block) -> dict[str, Any]:
    if b.kind == "tool_use":
        return {
            "type": "tool_use",
            "id": b.tool_id,
            "name": b.name,
            "input": json.loads(b.input_json or "{}"),
        }
    if b.kind == "thinking":
        return {"type": "thinking", "thinking": b.text, "signature": signature(b.text)}
    return {"type": "text", "text": b.text}


def signature(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stream_frames(
    ex: Exchange,
    message: dict[str, Any],
    blocks: list[Block],
    stop_reason: str,
    stop_sequence: str | None,
    output_tokens: int,
) -> list[bytes]:
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    if "usage" in message:
        start["usage"] = {**message["usage"], "output_tokens": 1}
    frames = [event("message_start", {"type": "message_start", "message": start})]
    for i, b in enumerate(blocks):
        if b.kind == "tool_use":
            opening: dict[str, Any] = {"type": "tool_use", "id": b.tool_id, "name": b.name, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in ["", *content.split_text(b.input_json, ex.faults.chunks)]
            ]
        elif b.kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": p}
                for p in content.split_text(b.text, ex.faults.chunks)
            ]
            deltas.append({"type": "signature_delta", "signature": signature(b.text)})
        else:
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in content.split_text(b.text, ex.faults.chunks)]
        frames.append(
            event(
                "content_block_start", {"type": "content_block_start", "index": i, "content_block": opening}
            )
        )
        if i == 0:
            frames.append(event("ping", {"type": "ping"}))
        frames += [
            event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})
            for d in deltas
        ]
        frames.append(event("content_block_stop", {"type": "content_block_stop", "index": i}))
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
    }
    if "usage" in message:
        delta["usage"] = {"output_tokens": output_tokens}
    frames.append(event("message_delta", delta))
    frames.append(event("message_stop", {"type": "message_stop"}))
    return frames


def validate(body: dict[str, Any], version: str = "2023-06-01") -> str | None:
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be a positive integer"
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    for name in ("temperature", "top_p", "top_k"):
        # From API version 2026-10-21 (the default of Anthropic's 2.x SDKs) sampling parameters are refused
        # at any value.
        if name in body and version >= SAMPLING_REMOVED_IN:
            return f"{name}: Extra inputs are not permitted"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            return f"{name}: Input should be less than or equal to 1"
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and t.get("name") for t in tools)
    ):
        return "tools: each tool needs a name"
    return None


def prompt_usage(parts: PromptParts, body: dict[str, Any], forced_cache: int | None) -> tuple[int, int]:
    tools_text = [json.dumps(body["tools"], sort_keys=True)] if body.get("tools") else []
    prompt = content.prompt_tokens(parts.texts + tools_text, parts.messages, parts.images)
    return prompt, content.cached_tokens(prompt, forced_cache)


@post("/v1/messages", status_code=200)
async def messages(request: Request[Any, Any, Any]) -> Response[Any]:
    opened = await open_exchange(request, dialect="anthropic", error=error_response, api_key=api_key(request))
    if isinstance(opened, Response):
        return opened
    ex = opened
    if "anthropic-version" not in request.headers:
        return fail(ex, 400, VERSION_REQUIRED)
    problem = validate(ex.body, request.headers["anthropic-version"])
    parts = read_prompt(ex.body) if problem is None else problem
    if isinstance(parts, str):
        return fail(ex, 400, parts)
    prompt, cached = prompt_usage(parts, ex.body, ex.faults.cached)
    blocks, stop_reason, stop_sequence, output = decide(
        ex.body, ex.model, parts, ex.faults.chunks, ex.faults.tool_calls
    )
    message: dict[str, Any] = {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": ex.model,
        "content": [block_json(b) for b in blocks],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": prompt - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": output,
            "service_tier": "standard",
        },
    }
    if ex.faults.no_usage:
        del message["usage"]
    if ex.body.get("stream"):
        failure = event("error", error_body(ex.faults.error_status or 529, "Overloaded"))
        return ex.stream(
            stream_frames(ex, message, blocks, stop_reason, stop_sequence, output), error_frame=failure
        )
    return ex.reply(message)


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens(request: Request[Any, Any, Any]) -> Response[Any]:
    opened = await open_exchange(
        request, dialect="anthropic", error=error_response, api_key=api_key(request), stream=False
    )
    if isinstance(opened, Response):
        return opened
    if "anthropic-version" not in request.headers:
        return fail(opened, 400, VERSION_REQUIRED)
    parts = read_prompt(opened.body)
    if isinstance(parts, str):
        return fail(opened, 400, parts)
    prompt, _ = prompt_usage(parts, opened.body, None)
    return opened.reply({"input_tokens": prompt})


def anthropic_models() -> dict[str, Any]:
    data = [
        {
            "type": "model",
            "id": m,
            "display_name": m.replace("-", " ").title(),
            "created_at": "2025-01-01T00:00:00Z",
        }
        for m in MODELS
    ]
    return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}


HANDLERS: list[HTTPRouteHandler] = [messages, count_tokens]
