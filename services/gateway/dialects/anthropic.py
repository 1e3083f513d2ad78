"""Anthropic Messages <-> the internal OpenAI chat form: requests, responses, streams, usage and errors.

Usage differs in one way that matters for money: Anthropic's `input_tokens` excludes tokens read from (or
written to) its prompt cache, while OpenAI's `prompt_tokens` includes cached ones. Prompt = input + cache
read + cache write; cached = cache read.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec

from services.gateway.dialects import media, shape
from services.gateway.dialects.errors import InvalidField, UnsupportedField, UpstreamStreamError
from services.gateway.dialects.openai import (
    TokenUsage,
    normal_chunk,
    normal_completion,
    now,
    usage_from_openai,
    usage_to_openai,
)

DIALECT = "anthropic"
# Anthropic requires max_tokens; an OpenAI request may leave it out.
DEFAULT_MAX_TOKENS = 4096
# From this `anthropic-version` on, temperature, top_p and top_k are refused at any value.
SAMPLING_REMOVED_IN = "2026-10-21"
# reasoning_effort <-> thinking budget (Anthropic's minimum budget is 1024).
EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
# reasoning_effort <-> output_config.effort, used with adaptive thinking (Claude 4.6 and later; 4.7 and later
# refuse budget_tokens outright).
EFFORT_LEVEL = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}

STOP_TO_OPENAI = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}
STOP_FROM_OPENAI = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_enc = msgspec.json.Encoder()


# --- usage ---


def usage_to_openai_usage(usage: Any) -> TokenUsage:
    u = usage if isinstance(usage, dict) else {}

    def n(key: str) -> int:
        v = u.get(key)
        return v if isinstance(v, int) and v > 0 else 0

    cache_read = n("cache_read_input_tokens")
    return TokenUsage(
        prompt_tokens=n("input_tokens") + cache_read + n("cache_creation_input_tokens"),
        completion_tokens=n("output_tokens"),
        cached_tokens=cache_read,
    )


def usage_from_openai_usage(u: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": max(u.prompt_tokens - u.cached_tokens, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.completion_tokens,
    }


# --- client request (Anthropic) -> internal (OpenAI) ---

_CLIENT_FIELDS = {
    "output_config",
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "stream",
    "metadata",
    "thinking",
    "service_tier",
}


def _text_of_system(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        parts = []
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise InvalidField(f"system.{i}", "system blocks must be text blocks")
            parts.append(str(block.get("text", "")))
        return "\n\n".join(parts)
    raise InvalidField("system", "'system' must be a string or a list of text blocks")


def _image_part(block: dict[str, Any], field: str) -> dict[str, Any]:
    source = shape.obj(block.get("source"), f"{field}.source")
    if source.get("type") == "base64":
        return {
            "type": "image_url",
            "image_url": {"url": media.data_url(str(source.get("media_type")), str(source.get("data")))},
        }
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": str(source.get("url"))}}
    raise UnsupportedField(f"{field}.source", "openai", "only base64 and url image sources")


def _document_part(block: dict[str, Any], field: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return {
            "type": "file",
            "file": {
                "filename": str(block.get("title") or "document.pdf"),
                "file_data": media.data_url(str(source.get("media_type")), str(source.get("data"))),
            },
        }
    raise UnsupportedField(f"{field}.source", "openai", "only base64 documents")


def _tool_result_text(block: dict[str, Any], field: str) -> str | list[dict[str, Any]]:
    inner = block.get("content")
    if inner is None:
        return ""
    if isinstance(inner, str):
        return inner
    if isinstance(inner, list):
        texts = []
        for j, b in enumerate(inner):
            if isinstance(b, dict) and b.get("type") == "text":
                texts.append(str(b.get("text", "")))
            else:
                raise UnsupportedField(f"{field}.content.{j}", "openai", "tool results may only hold text")
        return "\n".join(texts)
    raise InvalidField(f"{field}.content", "tool_result content must be a string or a list of blocks")


def _user_messages(blocks: list[Any], i: int) -> list[dict[str, Any]]:
    """One Anthropic user turn -> tool messages (its tool_result blocks) then one user message (the rest)."""
    tool_msgs: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        field = f"messages.{i}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image_part(block, field))
        elif kind == "document":
            parts.append(_document_part(block, field))
        elif kind == "tool_result":
            content = _tool_result_text(block, field)
            if block.get("is_error"):
                content = f"Error: {content}"
            tool_msgs.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": content}
            )
        else:
            raise UnsupportedField(f"{field}.type", "openai", f"content block {kind!r}")
    out = list(tool_msgs)
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_message(blocks: list[Any], i: int) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            # Earlier reasoning is not fed back to an OpenAI-style model (DeepSeek refuses it).
            continue
        else:
            raise UnsupportedField(f"messages.{i}.content.{j}.type", "openai", f"content block {kind!r}")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools_to_openai(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidField("tools", "'tools' must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not tool.get("name"):
            raise InvalidField(f"tools.{i}", "each tool needs a name")
        if tool.get("type") not in (None, "custom"):
            raise UnsupportedField(f"tools.{i}.type", "openai", f"server tool {tool.get('type')!r}")
        fn: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object"},
        }
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice_to_openai(choice: Any, body: dict[str, Any]) -> Any:
    if not isinstance(choice, dict):
        raise InvalidField("tool_choice", "'tool_choice' must be an object")
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": str(choice.get("name", ""))}}
    raise InvalidField("tool_choice.type", f"unknown tool_choice type {kind!r}")


def request_to_openai(body: dict[str, Any], *, counting: bool = False) -> dict[str, Any]:
    """An Anthropic Messages request from a client -> the internal OpenAI chat request. With `counting`, a
    `/v1/messages/count_tokens` body (no `max_tokens`), to count its prompt the same way."""
    unknown = sorted(set(body) - _CLIENT_FIELDS)
    if unknown:
        raise UnsupportedField(unknown[0], "openai")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("messages", "'messages' must be a non-empty list")
    max_tokens = body.get("max_tokens")
    out: dict[str, Any] = {"model": body.get("model")}
    if not counting or max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InvalidField("max_tokens", "'max_tokens' is required and must be a positive integer")
        # OpenAI's reasoning models refuse `max_tokens`; every current OpenAI model takes this one.
        out["max_completion_tokens"] = max_tokens
    chat: list[dict[str, Any]] = []
    if body.get("system") is not None:
        chat.append({"role": "system", "content": _text_of_system(body["system"])})
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise InvalidField(f"messages.{i}.role", "role must be 'user' or 'assistant'")
        blocks = msg.get("content")
        if isinstance(blocks, str):
            blocks = [{"type": "text", "text": blocks}]
        if not isinstance(blocks, list):
            raise InvalidField(f"messages.{i}.content", "content must be a string or a list of blocks")
        chat += _user_messages(blocks, i) if msg["role"] == "user" else [_assistant_message(blocks, i)]
    out["messages"] = chat
    if body.get("stop_sequences"):
        out["stop"] = shape.strings(body["stop_sequences"], "stop_sequences")
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("tools"):
        out["tools"] = _tools_to_openai(body["tools"])
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice_to_openai(body["tool_choice"], out)
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if user:
        out["user"] = str(user)
    thinking = shape.obj(body.get("thinking"), "thinking")
    config = shape.obj(body.get("output_config"), "output_config")
    for key in sorted(set(config) - {"effort", "format"}):
        raise UnsupportedField(f"output_config.{key}", "openai")
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        budget = budget if isinstance(budget, int) else EFFORT_BUDGET["medium"]
        out["reasoning_effort"] = next((e for e, b in EFFORT_BUDGET.items() if budget <= b), "high")
    elif thinking.get("type") == "adaptive":
        out["reasoning_effort"] = "medium"
    effort = config.get("effort")
    if effort is not None:
        if effort not in ("low", "medium", "high", "xhigh", "max"):
            raise InvalidField("output_config.effort", f"unknown effort {effort!r}")
        out["reasoning_effort"] = "xhigh" if effort == "max" else effort
    fmt = shape.obj(config.get("format"), "output_config.format")
    if fmt:
        if fmt.get("type") != "json_schema":
            raise UnsupportedField("output_config.format.type", "openai", f"{fmt.get('type')!r}")
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": "output",
                "schema": shape.obj(fmt.get("schema"), "output_config.format.schema"),
            },
        }
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- internal (OpenAI) -> upstream request (Anthropic) ---

# Fields with no Anthropic equivalent, refused unless left at their neutral value.
_NEUTRAL = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "seed": None,
    "logit_bias": None,
    "top_logprobs": None,
    "audio": None,
    "prediction": None,
    "modalities": None,
    "web_search_options": None,
}
_IGNORED = {
    "model",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "response_format",
    "reasoning_effort",
    "stream",
}


def _blocks_from_openai_content(content: Any, field: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidField(field, "content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        pfield = f"{field}[{j}]"
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            url = media.image_url_of(part, pfield)
            parsed = media.parse_data_url(url)
            source = (
                {"type": "base64", "media_type": parsed[0], "data": parsed[1]}
                if parsed
                else {"type": "url", "url": url}
            )
            blocks.append({"type": "image", "source": source})
        elif kind == "file":
            file = part.get("file") or {}
            parsed = media.parse_data_url(str(file.get("file_data", "")))
            if not parsed:
                raise UnsupportedField(f"{pfield}.file", DIALECT, "only inline file_data")
            blocks.append(
                {"type": "document", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}
            )
        else:
            raise UnsupportedField(f"{pfield}.type", DIALECT, f"content part {kind!r}")
    return blocks


def _system_text(content: Any, field: str) -> str:
    blocks = _blocks_from_openai_content(content, field)
    if any(b["type"] != "text" for b in blocks):
        raise UnsupportedField(field, DIALECT, "system messages may only hold text")
    return "\n\n".join(b["text"] for b in blocks)


def _arguments(raw: Any, field: str) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw or "{}")
    except (TypeError, ValueError):
        raise InvalidField(field, "tool call arguments must be a JSON object") from None
    if not isinstance(parsed, dict):
        raise InvalidField(field, "tool call arguments must be a JSON object")
    return parsed


def _tool_choice_from_openai(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any]
    if choice in (None, "auto"):
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif (
        isinstance(choice, dict)
        and isinstance(choice.get("function"), dict)
        and choice["function"].get("name")
    ):
        out = {"type": "tool", "name": str(choice["function"]["name"])}
    else:
        raise InvalidField("tool_choice", "unknown tool_choice")
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return None if choice is None and parallel is not False else out


def takes_sampling(api_version: str) -> bool:
    """Whether an `anthropic-version` still accepts temperature/top_p/top_k (2026-10-21 refuses them all)."""
    return api_version < SAMPLING_REMOVED_IN


def request_from_openai(
    body: dict[str, Any], upstream_model: str, *, sampling: bool = True, thinking: str = "adaptive"
) -> dict[str, Any]:
    """The internal OpenAI chat request -> an Anthropic Messages request for an Anthropic channel.

    `sampling=False` for an API version without sampling parameters (see `takes_sampling`): a value that
    changes nothing (temperature 1, top_p 1) is left out, any other is refused by name.
    `thinking` is how `reasoning_effort` is asked for: "adaptive" (adaptive thinking and
    `output_config.effort`, Claude 4.6 and later) or "budget" (`budget_tokens`, the models before 4.6).
    """
    for name, neutral in _NEUTRAL.items():
        if name in body and body[name] is not None and body[name] != neutral:
            raise UnsupportedField(name, DIALECT)
    unknown = sorted(set(body) - _IGNORED - set(_NEUTRAL))
    if unknown:
        raise UnsupportedField(unknown[0], DIALECT)
    fmt = shape.obj(body.get("response_format"), "response_format")
    if fmt.get("type") not in (None, "text", "json_object", "json_schema"):
        raise UnsupportedField("response_format.type", DIALECT, f"{fmt.get('type')!r}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("messages", "'messages' must be a non-empty list")

    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic wants alternating turns: consecutive same-role messages merge into one.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})

    for i, msg in enumerate(messages):
        field = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            system.append(_system_text(msg.get("content"), f"{field}.content"))
        elif role == "user":
            add("user", _blocks_from_openai_content(msg.get("content"), f"{field}.content"))
        elif role == "assistant":
            blocks = _blocks_from_openai_content(msg.get("content"), f"{field}.content")
            for k, call in enumerate(shape.arr(msg.get("tool_calls"), f"{field}.tool_calls")):
                call = shape.obj(call, f"{field}.tool_calls[{k}]")
                fn = shape.obj(call.get("function"), f"{field}.tool_calls[{k}].function")
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": str(call.get("id", "")),
                        "name": str(fn.get("name", "")),
                        "input": _arguments(
                            fn.get("arguments"), f"{field}.tool_calls[{k}].function.arguments"
                        ),
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            content = msg.get("content")
            result: Any = (
                content
                if isinstance(content, str)
                else _blocks_from_openai_content(content, f"{field}.content")
            )
            add(
                "user",
                [{"type": "tool_result", "tool_use_id": str(msg.get("tool_call_id", "")), "content": result}],
            )
        else:
            raise InvalidField(f"{field}.role", f"unknown role {role!r}")
    for turn in turns:
        if not turn["content"]:
            turn["content"] = [{"type": "text", "text": ""}]

    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": max_tokens, "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = shape.strings(stop, "stop")
    temperature = body.get("temperature")
    if temperature is not None:
        if shape.number(temperature, "temperature") > 1:
            raise UnsupportedField("temperature", DIALECT, "Anthropic accepts 0 to 1")
        out["temperature"] = temperature
    for name in ("top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if not sampling:
        for name in ("temperature", "top_p", "top_k"):
            value = out.pop(name, None)
            if value is not None and not (name != "top_k" and value == 1):
                raise UnsupportedField(
                    name, DIALECT, "this Anthropic API version takes no sampling parameters"
                )
    if body.get("tools"):
        tools = []
        for i, tool in enumerate(shape.arr(body["tools"], "tools")):
            tool = shape.obj(tool, f"tools[{i}]")
            spec = tool.get("function")
            if tool.get("type") != "function" or not isinstance(spec, dict) or not spec.get("name"):
                raise UnsupportedField(f"tools[{i}]", DIALECT, "only function tools")
            t: dict[str, Any] = {
                "name": spec["name"],
                "input_schema": spec.get("parameters") or {"type": "object"},
            }
            if spec.get("description"):
                t["description"] = spec["description"]
            tools.append(t)
        out["tools"] = tools
        choice = _tool_choice_from_openai(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    config: dict[str, Any] = {}
    if fmt.get("type") == "json_schema":
        schema = shape.obj(fmt.get("json_schema"), "response_format.json_schema").get("schema")
        config["format"] = {"type": "json_schema", "schema": schema or {"type": "object"}}
    elif fmt.get("type") == "json_object":
        config["format"] = {"type": "json_schema", "schema": {"type": "object"}}
    effort = body.get("reasoning_effort")
    if effort and effort != "none":
        if str(effort) not in EFFORT_LEVEL:
            raise InvalidField("reasoning_effort", f"unknown reasoning_effort {effort!r}")
        if thinking == "budget":
            budget = EFFORT_BUDGET.get(str(effort), EFFORT_BUDGET["high"])
            out["thinking"] = {"type": "enabled", "budget_tokens": budget}
            out["max_tokens"] = max(out["max_tokens"], budget + 1024)
        else:
            out["thinking"] = {"type": "adaptive"}
            config["effort"] = EFFORT_LEVEL[str(effort)]
        out.pop("temperature", None)  # Anthropic refuses temperature with thinking on
    if config:
        out["output_config"] = config
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    if body.get("stream"):
        out["stream"] = True
    return out


# --- upstream response (Anthropic) -> internal (OpenAI) ---


def _message_parts(blocks: list[Any]) -> tuple[str | None, str | None, list[dict[str, Any]]]:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in shape.dicts(blocks):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thoughts.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
    return ("".join(texts) if texts else None), ("".join(thoughts) if thoughts else None), calls


def response_to_openai(resp: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages response from an upstream -> an OpenAI chat completion."""
    text, reasoning, calls = _message_parts(resp.get("content") or [])
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    usage = usage_to_openai_usage(resp.get("usage"))
    return {
        "id": "chatcmpl-" + str(resp.get("id") or uuid.uuid4().hex).removeprefix("msg_"),
        "object": "chat.completion",
        "created": now(),
        "model": resp.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": STOP_TO_OPENAI.get(str(resp.get("stop_reason")), "stop"),
            }
        ],
        "usage": usage_to_openai(usage),
    }


# --- internal (OpenAI) response -> client (Anthropic) ---


def response_from_openai(resp: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion -> the Anthropic Messages response a client expects (first choice)."""
    resp = normal_completion(resp)
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    blocks: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
    if msg.get("content"):
        blocks.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = _arguments(fn.get("arguments"), "arguments")
        except InvalidField:
            args = {}
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id", "")),
                "name": str(fn.get("name", "")),
                "input": args,
            }
        )
    usage = usage_from_openai(resp.get("usage")) or TokenUsage()
    return {
        "id": "msg_" + str(resp.get("id") or uuid.uuid4().hex).removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": STOP_FROM_OPENAI.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": usage_from_openai_usage(usage),
    }


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
    return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _enc.encode(payload) + b"\n\n"


# --- streams ---


class StreamToOpenAI:
    """Anthropic SSE events from an upstream -> OpenAI chat chunks. `feed(event_name, data)` per event; after
    `message_stop` the last chunk returned carries usage (the gateway forwards it if the client asked)."""

    def __init__(self) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.model = ""
        self.created = now()
        self.usage = TokenUsage()
        self._input: dict[str, Any] = {}
        self._output_tokens = 0
        self._tool_index = -1

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _refresh_usage(self) -> None:
        self.usage = usage_to_openai_usage({**self._input, "output_tokens": self._output_tokens})

    def feed(self, event_name: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type") or event_name
        if kind == "message_start":
            message = shape.as_dict(data.get("message"))
            self.model = str(message.get("model") or "")
            if message.get("id"):
                self.id = "chatcmpl-" + str(message["id"]).removeprefix("msg_")
            usage = shape.as_dict(message.get("usage"))
            self._input = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
            self._output_tokens = self._input.pop("output_tokens", 0)
            self._refresh_usage()
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = shape.as_dict(data.get("content_block"))
            if block.get("type") == "tool_use":
                self._tool_index += 1
                return [
                    self._chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": self._tool_index,
                                    "id": str(block.get("id") or ""),
                                    "type": "function",
                                    "function": {"name": str(block.get("name") or ""), "arguments": ""},
                                }
                            ]
                        }
                    )
                ]
            if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = shape.as_dict(data.get("delta"))
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                return [self._chunk({"content": delta["text"]})]
            if delta.get("type") == "input_json_delta":
                piece = delta.get("partial_json")
                if not isinstance(piece, str) or not piece:
                    return []
                return [
                    self._chunk(
                        {"tool_calls": [{"index": self._tool_index, "function": {"arguments": piece}}]}
                    )
                ]
            if delta.get("type") == "thinking_delta" and isinstance(delta.get("thinking"), str):
                return [self._chunk({"reasoning_content": delta["thinking"]})]
            return []
        if kind == "message_delta":
            usage = shape.as_dict(data.get("usage"))
            if isinstance(usage.get("output_tokens"), int):
                self._output_tokens = usage["output_tokens"]
            for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
                if isinstance(usage.get(key), int):
                    self._input[key] = usage[key]
            self._refresh_usage()
            reason = shape.as_dict(data.get("delta")).get("stop_reason")
            if reason:
                return [self._chunk({}, STOP_TO_OPENAI.get(str(reason), "stop"))]
            return []
        if kind == "message_stop":
            return [
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_to_openai(self.usage),
                }
            ]
        if kind == "error":
            err = shape.as_dict(data.get("error"))
            raise UpstreamStreamError(
                str(err.get("type", "api_error")), str(err.get("message", "upstream error"))
            )
        return []  # ping, content_block_stop, and event types added later


class StreamFromOpenAI:
    """OpenAI chat chunks -> the Anthropic SSE events a client expects. `feed(chunk)` per chunk, then
    `finish(usage)` once (usage from the upstream's final chunk, or counted by the gateway), or
    `error(...)`."""

    def __init__(self, model: str, message_id: str | None = None, input_tokens: int = 0) -> None:
        # `input_tokens`: the gateway's own count of the prompt, for `message_start` (the upstream's exact
        # usage only arrives at the end, in `message_delta`).
        self.model = model
        self.input_tokens = input_tokens
        self.id = message_id or "msg_" + uuid.uuid4().hex[:24]
        self.stop_reason: str | None = None
        self.usage: TokenUsage | None = None
        self._started = False
        self._index = -1
        self._open: str | None = None  # kind of the open content block
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_call index -> our block index

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return [
            sse("message_start", {"type": "message_start", "message": message}),
            sse("ping", {"type": "ping"}),
        ]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._index += 1
        self._open = kind
        out.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": block},
            )
        )
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        chunk = normal_chunk(chunk)
        out = self._start()
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # Anthropic has one answer; n > 1 is refused on the way in
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._open != "thinking":
                    out += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]}))
            if delta.get("content"):
                if self._open != "text":
                    out += self._open_block("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                fn = call.get("function") or {}
                if index not in self._tool_blocks:
                    out += self._open_block(
                        "tool_use",
                        {
                            "type": "tool_use",
                            "id": call.get("id") or "",
                            "name": fn.get("name") or "",
                            "input": {},
                        },
                    )
                    self._tool_blocks[index] = self._index
                if fn.get("arguments"):
                    if self._tool_blocks[index] != self._index:
                        continue  # interleaved arguments of an earlier call: Anthropic cannot express it
                    out.append(self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]}))
            if choice.get("finish_reason"):
                self.stop_reason = STOP_FROM_OPENAI.get(str(choice["finish_reason"]), "end_turn")
        return out

    def finish(self, usage: TokenUsage | None = None) -> list[bytes]:
        final = usage or self.usage or TokenUsage()
        out = self._start() + self._close()
        out.append(
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": None},
                    "usage": usage_from_openai_usage(final),
                },
            )
        )
        out.append(sse("message_stop", {"type": "message_stop"}))
        return out

    def error(self, message: str, status: int = 500) -> list[bytes]:
        return [*self._start(), sse("error", error_body(status, "", message))]


def count_tokens_response(input_tokens: int) -> dict[str, Any]:
    """The answer to `POST /v1/messages/count_tokens`."""
    return {"input_tokens": input_tokens}
