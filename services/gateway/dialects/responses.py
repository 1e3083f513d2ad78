"""The OpenAI Responses API (`POST /v1/responses`) as a client dialect, over the internal chat form.

Faregate stores no conversation, so `previous_response_id` and stored conversations are refused; everything a
stateless agent client sends (instructions, input items with function calls and their outputs, tools, JSON
output, reasoning effort) is translated.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec

from services.gateway.dialects import shape
from services.gateway.dialects.errors import InvalidField, UnsupportedField
from services.gateway.dialects.openai import (
    TokenUsage,
    normal_chunk,
    normal_completion,
    now,
    usage_from_openai,
)

_enc = msgspec.json.Encoder()

_FIELDS = {
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "stream",
    "store",
    "metadata",
    "user",
    "include",
    "truncation",
    "service_tier",
    "previous_response_id",
    "prompt_cache_key",
    "safety_identifier",
    "background",
    "conversation",
    "stream_options",
    "max_tool_calls",
    "top_logprobs",
}


def _new(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- request: Responses -> chat ---


def _content_parts(content: Any, field: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidField(field, "content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise UnsupportedField(f"{field}[{j}].file_id", "chat", "images by file id")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") not in (None, "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and isinstance(part.get("file_data"), str):
            parts.append(
                {
                    "type": "file",
                    "file": {"filename": str(part.get("filename") or "file"), "file_data": part["file_data"]},
                }
            )
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        else:
            raise UnsupportedField(f"{field}[{j}].type", "chat", f"content part {kind!r}")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _input_messages(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise InvalidField("input", "'input' must be a string or a list of items")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        field = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidField(field, "each input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidField(f"{field}.role", f"unknown role {role!r}")
            out.append({"role": role, "content": _content_parts(item.get("content"), f"{field}.content")})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {"name": str(item.get("name", "")), "arguments": str(item.get("arguments", ""))},
            }
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            elif out and out[-1]["role"] == "assistant" and isinstance(out[-1].get("content"), str):
                out[-1]["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        elif kind == "reasoning":
            continue  # earlier reasoning is not fed back to a chat model
        else:
            raise UnsupportedField(f"{field}.type", "chat", f"input item {kind!r}")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(shape.arr(tools, "tools")):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise UnsupportedField(
                f"tools[{i}].type", "chat", f"tool {tool.get('type') if isinstance(tool, dict) else tool!r}"
            )
        fn: dict[str, Any] = {
            "name": tool.get("name"),
            "parameters": tool.get("parameters") or {"type": "object"},
        }
        if tool.get("description"):
            fn["description"] = tool["description"]
        if tool.get("strict") is not None:
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
    return out


def request_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses API request -> the internal chat request."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise UnsupportedField(unknown[0], "chat")
    for name in ("previous_response_id", "conversation"):
        if body.get(name):
            raise UnsupportedField(name, "chat", "Faregate keeps no conversation state; send the whole input")
    if body.get("background"):
        raise UnsupportedField("background", "chat")
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": str(body["instructions"])})
    messages += _input_messages(body.get("input"))
    if not messages:
        raise InvalidField("input", "'input' must not be empty")
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(name) is not None:
            out[name] = body[name]
    user = body.get("safety_identifier") or body.get("user")
    if user:
        out["user"] = str(user)
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise UnsupportedField("tool_choice.type", "chat", f"{choice.get('type')!r}")
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        out["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {"name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    effort = (body.get("reasoning") or {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort:
        out["reasoning_effort"] = effort
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- response: chat -> Responses ---


def usage_to_responses(u: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _skeleton(request: dict[str, Any], model: str, rid: str, created: int) -> dict[str, Any]:
    text = request.get("text") if isinstance(request.get("text"), dict) else None
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": (request.get("reasoning") or {}).get("effort"), "summary": None},
        "store": False,
        "temperature": request.get("temperature", 1.0),
        "text": text or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": request.get("metadata") or {},
    }


def _finish_status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _message_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id or _new("msg"),
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(call_id: str, name: str, arguments: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id or _new("fc"),
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _reasoning_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id or _new("rs"),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
    }


def response_from_chat(chat: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """An internal chat completion -> the Responses object a client expects (first choice)."""
    chat = normal_completion(chat)
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        output.append(_reasoning_item(msg["reasoning_content"]))
    if msg.get("content"):
        output.append(_message_item(msg["content"]))
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append(
            _call_item(str(call.get("id", "")), str(fn.get("name", "")), str(fn.get("arguments", "")))
        )
    out = _skeleton(
        request, str(chat.get("model") or request.get("model")), _new("resp"), chat.get("created") or now()
    )
    out["status"], out["incomplete_details"] = _finish_status(choice.get("finish_reason"))
    out["output"] = output
    out["usage"] = usage_to_responses(usage_from_openai(chat.get("usage")) or TokenUsage())
    return out


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        402: "insufficient_quota",
        403: "permission_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
    }
    return {
        "error": {"message": message, "type": kinds.get(status, "server_error"), "param": param, "code": code}
    }


# --- streams: chat chunks -> Responses events ---


class StreamFromChat:
    """Internal chat chunks -> the Responses API event stream (`response.created` ... `response.completed`),
    as the `openai` SDK's `responses.create(stream=True)` and `responses.stream()` read it."""

    def __init__(self, request: dict[str, Any], model: str) -> None:
        self.request = request
        self.response = _skeleton(request, model, _new("resp"), now())
        self.usage: TokenUsage | None = None
        self.finish_reason: str | None = None
        self._seq = 0
        self._started = False
        self._items: list[dict[str, Any]] = []  # finished output items, in order
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool_call index -> its item

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _enc.encode(payload) + b"\n\n"

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def _close(self) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        self._open = None
        index = item["_index"]
        out: list[bytes] = []
        if item["type"] == "message":
            text = item["_text"]
            done = _message_item(text, item["id"])
            part = done["content"][0]
            out += [
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
            ]
        elif item["type"] == "function_call":
            done = _call_item(item["call_id"], item["name"], item["_args"], item["id"])
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["_args"],
                )
            )
        else:
            text = item["_text"]
            done = _reasoning_item(text, item["id"])
            out += [
                self._event(
                    "response.reasoning_summary_text.done",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    text=text,
                ),
                self._event(
                    "response.reasoning_summary_part.done",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    part={"type": "summary_text", "text": text},
                ),
            ]
        self._items.append(done)
        out.append(self._event("response.output_item.done", output_index=index, item=done))
        return out

    def _open_item(self, kind: str, **extra: Any) -> list[bytes]:
        out = self._close()
        index = len(self._items)
        prefix = {"message": "msg", "function_call": "fc", "reasoning": "rs"}[kind]
        item: dict[str, Any] = {
            "id": _new(prefix),
            "type": kind,
            "_index": index,
            "_text": "",
            "_args": "",
            **extra,
        }
        self._open = item
        if kind == "message":
            shown: dict[str, Any] = {
                "id": item["id"],
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            out.append(self._event("response.output_item.added", output_index=index, item=shown))
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        elif kind == "function_call":
            shown = {
                "id": item["id"],
                "type": "function_call",
                "status": "in_progress",
                "call_id": extra["call_id"],
                "name": extra["name"],
                "arguments": "",
            }
            out.append(self._event("response.output_item.added", output_index=index, item=shown))
        else:
            shown = {"id": item["id"], "type": "reasoning", "summary": []}
            out.append(self._event("response.output_item.added", output_index=index, item=shown))
            out.append(
                self._event(
                    "response.reasoning_summary_part.added",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    part={"type": "summary_text", "text": ""},
                )
            )
        return out

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        chunk = normal_chunk(chunk)
        out = self._start()
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._open is None or self._open["type"] != "reasoning":
                    out += self._open_item("reasoning")
                assert self._open is not None
                self._open["_text"] += delta["reasoning_content"]
                out.append(
                    self._event(
                        "response.reasoning_summary_text.delta",
                        item_id=self._open["id"],
                        output_index=self._open["_index"],
                        summary_index=0,
                        delta=delta["reasoning_content"],
                    )
                )
            if delta.get("content"):
                if self._open is None or self._open["type"] != "message":
                    out += self._open_item("message")
                assert self._open is not None
                self._open["_text"] += delta["content"]
                out.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=self._open["id"],
                        output_index=self._open["_index"],
                        content_index=0,
                        delta=delta["content"],
                        logprobs=[],
                    )
                )
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                fn = call.get("function") or {}
                if index not in self._calls:
                    out += self._open_item(
                        "function_call",
                        call_id=str(call.get("id") or _new("call")),
                        name=str(fn.get("name") or ""),
                    )
                    self._calls[index] = self._open  # type: ignore[assignment]
                item = self._calls[index]
                if fn.get("arguments") and item is self._open:
                    item["_args"] += fn["arguments"]
                    out.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            item_id=item["id"],
                            output_index=item["_index"],
                            delta=fn["arguments"],
                        )
                    )
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def finish(self, usage: TokenUsage | None = None) -> list[bytes]:
        out = self._start() + self._close()
        final = dict(self.response)
        final["status"], final["incomplete_details"] = _finish_status(self.finish_reason)
        final["output"] = self._items
        final["usage"] = usage_to_responses(usage or self.usage or TokenUsage())
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=final))
        return out

    def error(self, message: str, code: str = "server_error") -> list[bytes]:
        out = self._start()
        failed = {
            **self.response,
            "status": "failed",
            "error": {"code": code, "message": message},
            "output": self._items,
        }
        out.append(self._event("response.failed", response=failed))
        return out
