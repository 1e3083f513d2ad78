"""Gemini (Google AI generateContent) <-> the internal OpenAI chat form: requests, responses, streams, usage
and errors.

Gemini's function calls usually carry no id, while OpenAI ties each tool result to its call by id. Calls get
stable ids here (`call_<n>_<name>`), and a `functionResponse` is matched to the oldest unanswered call of
the same name. Gemini's `promptTokenCount` includes cached tokens, as OpenAI's `prompt_tokens` does;
thinking tokens are reported apart (`thoughtsTokenCount`) and are part of OpenAI's `completion_tokens`.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict, deque
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

DIALECT = "gemini"
EFFORT_BUDGET = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
# reasoning_effort <-> thinkingLevel (Gemini 3 and later; 2.5 takes thinkingBudget; both at once is a 400).
EFFORT_LEVEL = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH", "xhigh": "HIGH"}

FINISH_TO_OPENAI = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
}
FINISH_FROM_OPENAI = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "content_filter": "SAFETY",
}
# JSON-schema keywords Gemini's `parameters` (an OpenAPI subset) refuses; they constrain nothing it checks.
_SCHEMA_DROP = {"$schema", "$id", "additionalProperties", "strict", "examples", "$comment"}

_enc = msgspec.json.Encoder()


def pick(d: Any, camel: str) -> Any:
    """A field by its camelCase name or its snake_case twin (Google's servers accept both)."""
    if not isinstance(d, dict):
        return None
    if camel in d:
        return d[camel]
    return d.get("".join("_" + c.lower() if c.isupper() else c for c in camel))


def upstream_path(model: str, stream: bool) -> str:
    """The path (after the base URL) of a Gemini call for `model`."""
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{model}:{action}"


# --- usage ---


def usage_to_openai_usage(meta: Any) -> TokenUsage:
    m = meta if isinstance(meta, dict) else {}

    def n(key: str) -> int:
        v = pick(m, key)
        return v if isinstance(v, int) and v > 0 else 0

    thoughts = n("thoughtsTokenCount")
    return TokenUsage(
        prompt_tokens=n("promptTokenCount") + n("toolUsePromptTokenCount"),
        completion_tokens=n("candidatesTokenCount") + thoughts,
        cached_tokens=n("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def usage_from_openai_usage(u: TokenUsage) -> dict[str, Any]:
    visible = max(u.completion_tokens - u.reasoning_tokens, 0)
    out: dict[str, Any] = {
        "promptTokenCount": u.prompt_tokens,
        "candidatesTokenCount": visible,
        "totalTokenCount": u.prompt_tokens + u.completion_tokens,
    }
    if u.cached_tokens:
        out["cachedContentTokenCount"] = u.cached_tokens
    if u.reasoning_tokens:
        out["thoughtsTokenCount"] = u.reasoning_tokens
    return out


# --- schemas: Gemini spells types in capitals and refuses some JSON-schema keywords ---


def schema_to_openai(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: schema_to_openai(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = out["type"].lower()
        return out
    if isinstance(schema, list):
        return [schema_to_openai(v) for v in schema]
    return schema


def schema_from_openai(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: schema_from_openai(v) for k, v in schema.items() if k not in _SCHEMA_DROP}
    if isinstance(schema, list):
        return [schema_from_openai(v) for v in schema]
    return schema


# --- client request (Gemini) -> internal (OpenAI) ---

_CLIENT_FIELDS = {
    "contents",
    "systemInstruction",
    "system_instruction",
    "generationConfig",
    "generation_config",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "model",
}
_GEN_FIELDS = {
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "stopSequences",
    "candidateCount",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "thinkingConfig",
    "responseModalities",
}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


class _CallIds:
    """Ids for Gemini function calls, and the matching of responses to calls by name."""

    def __init__(self) -> None:
        self._count = 0
        self._pending: dict[str, deque[str]] = defaultdict(deque)

    def call(self, name: str, given: Any) -> str:
        self._count += 1
        cid = str(given) if given else f"call_{self._count}_{name}"
        self._pending[name].append(cid)
        return cid

    def response(self, name: str, given: Any) -> str:
        if given:
            pending = self._pending[name]
            if str(given) in pending:
                pending.remove(str(given))
            return str(given)
        return self._pending[name].popleft() if self._pending[name] else f"call_0_{name}"


def _user_parts(parts: list[Any], i: int, ids: _CallIds) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        field = f"contents[{i}].parts[{j}]"
        if not isinstance(part, dict):
            raise InvalidField(field, "a part must be an object")
        inline = pick(part, "inlineData")
        file_data = pick(part, "fileData")
        reply = pick(part, "functionResponse")
        if "text" in part:
            content.append({"type": "text", "text": str(part["text"])})
        elif inline is not None:
            inline = shape.obj(inline, f"{field}.inlineData")
            mime = str(pick(inline, "mimeType") or "")
            url = media.data_url(mime, str(inline.get("data", "")))
            if mime.startswith("image/"):
                content.append({"type": "image_url", "image_url": {"url": url}})
            else:
                content.append({"type": "file", "file": {"filename": "document", "file_data": url}})
        elif file_data is not None:
            file_data = shape.obj(file_data, f"{field}.fileData")
            mime = str(pick(file_data, "mimeType") or "")
            if not mime.startswith("image/"):
                raise UnsupportedField(f"{field}.fileData", "openai", "only images by URL")
            content.append({"type": "image_url", "image_url": {"url": str(pick(file_data, "fileUri"))}})
        elif reply is not None:
            reply = shape.obj(reply, f"{field}.functionResponse")
            name = str(reply.get("name", ""))
            response = reply.get("response")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": ids.response(name, reply.get("id")),
                    "content": json.dumps(response if response is not None else {}),
                }
            )
        else:
            raise UnsupportedField(field, "openai", f"part kind {sorted(part)}")
    if len(content) == 1 and content[0]["type"] == "text":
        out.append({"role": "user", "content": content[0]["text"]})
    elif content:
        out.append({"role": "user", "content": content})
    return out


def _model_message(parts: list[Any], i: int, ids: _CallIds) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise InvalidField(f"contents[{i}].parts[{j}]", "a part must be an object")
        call = pick(part, "functionCall")
        if "text" in part:
            if not part.get("thought"):
                texts.append(str(part["text"]))
        elif call is not None:
            call = shape.obj(call, f"contents[{i}].parts[{j}].functionCall")
            name = str(call.get("name", ""))
            calls.append(
                {
                    "id": ids.call(name, call.get("id")),
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(call.get("args") or {})},
                }
            )
        elif pick(part, "thoughtSignature") is not None:
            continue
        else:
            raise UnsupportedField(f"contents[{i}].parts[{j}]", "openai", f"model part kind {sorted(part)}")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _generation_to_openai(gen: dict[str, Any], out: dict[str, Any]) -> None:
    for key in gen:
        camel = key if key in _GEN_FIELDS else next((f for f in _GEN_FIELDS if _snake(f) == key), None)
        if camel is None:
            raise UnsupportedField(f"generationConfig.{key}", "openai")
    simple = {
        "maxOutputTokens": "max_completion_tokens",
        "temperature": "temperature",
        "topP": "top_p",
        "topK": "top_k",
        "candidateCount": "n",
        "presencePenalty": "presence_penalty",
        "frequencyPenalty": "frequency_penalty",
        "seed": "seed",
    }
    for camel, name in simple.items():
        value = pick(gen, camel)
        if value is not None:
            out[name] = value
    stops = pick(gen, "stopSequences")
    if stops:
        out["stop"] = shape.strings(stops, "generationConfig.stopSequences")
    mime = pick(gen, "responseMimeType")
    schema = pick(gen, "responseJsonSchema") or pick(gen, "responseSchema")
    if mime == "application/json":
        out["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "response", "schema": schema_to_openai(schema)}}
            if schema
            else {"type": "json_object"}
        )
    elif mime not in (None, "text/plain"):
        raise UnsupportedField("generationConfig.responseMimeType", "openai", f"{mime!r}")
    modalities = pick(gen, "responseModalities")
    if modalities and [str(m).upper() for m in modalities] != ["TEXT"]:
        raise UnsupportedField("generationConfig.responseModalities", "openai", "only TEXT")
    thinking = pick(gen, "thinkingConfig")
    if isinstance(thinking, dict):
        budget = pick(thinking, "thinkingBudget")
        level = pick(thinking, "thinkingLevel")
        if isinstance(budget, int) and budget > 0:
            out["reasoning_effort"] = next((e for e, b in EFFORT_BUDGET.items() if budget <= b), "high")
        elif isinstance(level, str) and level.lower() in EFFORT_LEVEL:
            out["reasoning_effort"] = level.lower()


def request_to_openai(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """A Gemini generateContent request from a client (model and streaming come from the URL) -> internal."""
    unknown = sorted(set(body) - _CLIENT_FIELDS)
    if unknown:
        raise UnsupportedField(unknown[0], "openai")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidField("contents", "'contents' must be a non-empty list")
    messages: list[dict[str, Any]] = []
    system = pick(body, "systemInstruction")
    if system is not None:
        parts = system.get("parts") if isinstance(system, dict) else None
        if not isinstance(parts, list) or any(not isinstance(p, dict) or "text" not in p for p in parts):
            raise InvalidField("systemInstruction", "systemInstruction must hold text parts")
        messages.append({"role": "system", "content": "\n\n".join(str(p["text"]) for p in parts)})
    ids = _CallIds()
    for i, item in enumerate(contents):
        parts = item.get("parts") if isinstance(item, dict) else None
        if not isinstance(parts, list):
            raise InvalidField(f"contents[{i}].parts", "parts must be a list")
        role = item.get("role", "user")
        if role in ("user", "function"):
            messages += _user_parts(parts, i, ids)
        elif role == "model":
            messages.append(_model_message(parts, i, ids))
        else:
            raise InvalidField(f"contents[{i}].role", f"unknown role {role!r}")
    out: dict[str, Any] = {"model": model, "messages": messages}
    gen = pick(body, "generationConfig")
    if isinstance(gen, dict):
        _generation_to_openai(gen, out)
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(shape.arr(body.get("tools"), "tools")):
        tool = shape.obj(tool, f"tools[{i}]")
        decls = pick(tool, "functionDeclarations")
        if not isinstance(decls, list) or set(tool) - {"functionDeclarations", "function_declarations"}:
            raise UnsupportedField(f"tools[{i}]", "openai", "only functionDeclarations")
        for k, decl in enumerate(decls):
            decl = shape.obj(decl, f"tools[{i}].functionDeclarations[{k}]")
            fn: dict[str, Any] = {
                "name": decl.get("name"),
                "parameters": schema_to_openai(
                    pick(decl, "parametersJsonSchema")
                    or decl.get("parameters")
                    or {"type": "object", "properties": {}}
                ),
            }
            if decl.get("description"):
                fn["description"] = decl["description"]
            tools.append({"type": "function", "function": fn})
    if tools:
        out["tools"] = tools
    config = pick(pick(body, "toolConfig"), "functionCallingConfig")
    if isinstance(config, dict):
        mode = str(config.get("mode", "AUTO")).upper()
        allowed = pick(config, "allowedFunctionNames") or []
        if mode == "NONE":
            out["tool_choice"] = "none"
        elif mode == "ANY" and len(allowed) == 1:
            out["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
        elif mode == "ANY":
            out["tool_choice"] = "required"
        elif mode == "AUTO":
            out["tool_choice"] = "auto"
        else:
            raise UnsupportedField("toolConfig.functionCallingConfig.mode", "openai", mode)
        if allowed and len(allowed) > 1:
            raise UnsupportedField(
                "toolConfig.functionCallingConfig.allowedFunctionNames",
                "openai",
                "more than one allowed function",
            )
    # safetySettings only loosen or tighten Google's own filters; other providers have no such knob.
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def count_tokens_to_openai(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A `:countTokens` body (`contents`, or a whole `generateContentRequest`) -> internal, for counting."""
    inner = pick(body, "generateContentRequest")
    return request_to_openai(inner if isinstance(inner, dict) else body, model, stream=False)


def count_tokens_response(total_tokens: int) -> dict[str, Any]:
    return {"totalTokens": total_tokens}


# --- internal (OpenAI) -> upstream request (Gemini) ---

_NEUTRAL = {
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "audio": None,
    "prediction": None,
    "modalities": None,
    "web_search_options": None,
}
_KNOWN = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
}


def _parts_from_openai(content: Any, field: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidField(field, "content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        pfield = f"{field}[{j}]"
        if kind == "text":
            parts.append({"text": str(part.get("text", ""))})
        elif kind == "image_url":
            url = media.image_url_of(part, pfield)
            parsed = media.parse_data_url(url)
            parts.append(
                {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
                if parsed
                else {"fileData": {"mimeType": media.guess_mime(url), "fileUri": url}}
            )
        elif kind == "file":
            parsed = media.parse_data_url(str((part.get("file") or {}).get("file_data", "")))
            if not parsed:
                raise UnsupportedField(f"{pfield}.file", DIALECT, "only inline file_data")
            parts.append({"inlineData": {"mimeType": parsed[0], "data": parsed[1]}})
        else:
            raise UnsupportedField(f"{pfield}.type", DIALECT, f"content part {kind!r}")
    return parts


def _function_response(content: Any) -> dict[str, Any]:
    text = (
        content if isinstance(content, str) else "".join(str(p.get("text", "")) for p in shape.dicts(content))
    )
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"result": text}


def request_from_openai(
    body: dict[str, Any], upstream_model: str, *, thinking: str = "level"
) -> dict[str, Any]:
    """The internal OpenAI chat request -> a Gemini generateContent body (the model goes in the URL; see
    `upstream_path`). `thinking` is how `reasoning_effort` is asked for: "level" (`thinkingLevel`, Gemini 3
    and later) or "budget" (`thinkingBudget`, Gemini 2.5)."""
    for name, neutral in _NEUTRAL.items():
        if body.get(name) is not None and body[name] != neutral:
            raise UnsupportedField(name, DIALECT)
    unknown = sorted(set(body) - _KNOWN - set(_NEUTRAL))
    if unknown:
        raise UnsupportedField(unknown[0], DIALECT)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("messages", "'messages' must be a non-empty list")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": role, "parts": parts})

    for i, msg in enumerate(messages):
        field = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            parts = _parts_from_openai(msg.get("content"), f"{field}.content")
            if any("text" not in p for p in parts):
                raise UnsupportedField(f"{field}.content", DIALECT, "system messages may only hold text")
            system += parts
        elif role == "user":
            add("user", _parts_from_openai(msg.get("content"), f"{field}.content"))
        elif role == "assistant":
            parts = _parts_from_openai(msg.get("content"), f"{field}.content")
            for k, call in enumerate(shape.arr(msg.get("tool_calls"), f"{field}.tool_calls")):
                call = shape.obj(call, f"{field}.tool_calls[{k}]")
                fn = shape.obj(call.get("function"), f"{field}.tool_calls[{k}].function")
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except (TypeError, ValueError):
                    raise InvalidField(
                        f"{field}.tool_calls[{k}].function.arguments", "tool call arguments must be JSON"
                    ) from None
                names[str(call.get("id", ""))] = str(fn.get("name", ""))
                parts.append({"functionCall": {"name": str(fn.get("name", "")), "args": args}})
            add("model", parts)
        elif role == "tool":
            call_id = str(msg.get("tool_call_id", ""))
            if call_id not in names:
                raise InvalidField(f"{field}.tool_call_id", "no earlier tool call has this id")
            add(
                "user",
                [
                    {
                        "functionResponse": {
                            "name": names[call_id],
                            "response": _function_response(msg.get("content")),
                        }
                    }
                ],
            )
        else:
            raise InvalidField(f"{field}.role", f"unknown role {role!r}")
    for item in contents:
        if not item["parts"]:
            item["parts"] = [{"text": ""}]
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    gen: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        gen["maxOutputTokens"] = max_tokens
    for name, camel in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ):
        if body.get(name) is not None:
            gen[camel] = body[name]
    stop = body.get("stop")
    if stop:
        gen["stopSequences"] = shape.strings(stop, "stop")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        gen["responseMimeType"] = "application/json"
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        gen["responseMimeType"] = "application/json"
        schema = shape.obj(fmt.get("json_schema"), "response_format.json_schema").get("schema")
        gen["responseJsonSchema"] = schema or {"type": "object"}
    effort = body.get("reasoning_effort")
    if effort and effort != "none":
        if str(effort) not in EFFORT_LEVEL:
            raise InvalidField("reasoning_effort", f"unknown reasoning_effort {effort!r}")
        if thinking == "budget":
            gen["thinkingConfig"] = {
                "thinkingBudget": EFFORT_BUDGET.get(str(effort), EFFORT_BUDGET["high"]),
                "includeThoughts": True,
            }
        else:
            gen["thinkingConfig"] = {"thinkingLevel": EFFORT_LEVEL[str(effort)], "includeThoughts": True}
    if gen:
        out["generationConfig"] = gen
    if body.get("tools"):
        decls = []
        for i, tool in enumerate(shape.arr(body["tools"], "tools")):
            tool = shape.obj(tool, f"tools[{i}]")
            spec = tool.get("function")
            if tool.get("type") != "function" or not isinstance(spec, dict) or not spec.get("name"):
                raise UnsupportedField(f"tools[{i}]", DIALECT, "only function tools")
            decl: dict[str, Any] = {"name": spec["name"]}
            if spec.get("description"):
                decl["description"] = spec["description"]
            if spec.get("parameters"):
                decl["parameters"] = schema_from_openai(spec["parameters"])
            decls.append(decl)
        out["tools"] = [{"functionDeclarations": decls}]
        choice = body.get("tool_choice")
        if choice == "none":
            out["toolConfig"] = {"functionCallingConfig": {"mode": "NONE"}}
        elif choice == "required":
            out["toolConfig"] = {"functionCallingConfig": {"mode": "ANY"}}
        elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
            out["toolConfig"] = {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
            }
        elif choice not in (None, "auto"):
            raise InvalidField("tool_choice", "unknown tool_choice")
    return out


# --- upstream response (Gemini) -> internal (OpenAI) ---


def _call_id(call: dict[str, Any], salt: str) -> str:
    return str(call.get("id") or f"call_{salt}_{call.get('name', '')}")


def _candidate_message(cand: dict[str, Any], salt: str) -> tuple[dict[str, Any], str]:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for k, part in enumerate(shape.dicts(shape.as_dict(cand.get("content")).get("parts"))):
        call = pick(part, "functionCall")
        if "text" in part:
            (thoughts if part.get("thought") else texts).append(str(part["text"]))
        elif isinstance(call, dict):
            calls.append(
                {
                    "id": _call_id(call, f"{salt}{k}"),
                    "type": "function",
                    "function": {
                        "name": str(call.get("name", "")),
                        "arguments": json.dumps(call.get("args") or {}),
                    },
                }
            )
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if thoughts:
        msg["reasoning_content"] = "".join(thoughts)
    if calls:
        msg["tool_calls"] = calls
    finish = FINISH_TO_OPENAI.get(str(pick(cand, "finishReason")), "stop")
    if calls and finish == "stop":
        finish = "tool_calls"
    return msg, finish


def response_to_openai(resp: dict[str, Any], model: str) -> dict[str, Any]:
    """A Gemini generateContent response from an upstream -> an OpenAI chat completion."""
    rid = str(pick(resp, "responseId") or uuid.uuid4().hex[:24])
    choices = []
    for n, cand in enumerate(shape.dicts(resp.get("candidates"))):
        msg, finish = _candidate_message(cand, f"{rid[:8]}_{n}_")
        choices.append(
            {"index": cand.get("index", n), "message": msg, "logprobs": None, "finish_reason": finish}
        )
    if not choices:
        # The prompt itself was blocked (promptFeedback.blockReason): an empty, filtered answer.
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        )
    return {
        "id": "chatcmpl-" + rid,
        "object": "chat.completion",
        "created": now(),
        "model": pick(resp, "modelVersion") or model,
        "choices": choices,
        "usage": usage_to_openai(usage_to_openai_usage(pick(resp, "usageMetadata"))),
    }


# --- internal (OpenAI) response -> client (Gemini) ---


def _parts_of_message(msg: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        parts.append({"text": msg["reasoning_content"], "thought": True})
    if msg.get("content"):
        parts.append({"text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = {}
        parts.append({"functionCall": {"id": call.get("id"), "name": fn.get("name"), "args": args}})
    return parts or [{"text": ""}]


def response_from_openai(resp: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion -> the Gemini generateContent response a client expects."""
    resp = normal_completion(resp)
    candidates = []
    for choice in resp.get("choices") or []:
        candidates.append(
            {
                "content": {"parts": _parts_of_message(choice.get("message") or {}), "role": "model"},
                "finishReason": FINISH_FROM_OPENAI.get(str(choice.get("finish_reason")), "STOP"),
                "index": choice.get("index", 0),
            }
        )
    usage = usage_from_openai(resp.get("usage")) or TokenUsage()
    return {
        "candidates": candidates,
        "usageMetadata": usage_from_openai_usage(usage),
        "modelVersion": model,
        "responseId": str(resp.get("id") or uuid.uuid4().hex).removeprefix("chatcmpl-"),
    }


_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "INTERNAL")}}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _enc.encode(payload) + b"\r\n\r\n"


# --- streams ---


class StreamToOpenAI:
    """Gemini stream payloads (each a partial GenerateContentResponse) -> OpenAI chat chunks.
    `feed(data)` per payload; `finish()` once at the end returns the usage chunk."""

    def __init__(self, model: str) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.model = model
        self.created = now()
        self.usage = TokenUsage()
        self._started: set[int] = set()
        self._tool_counts: dict[int, int] = defaultdict(int)

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def feed(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(data.get("error"), dict):
            err = data["error"]
            raise UpstreamStreamError(
                str(err.get("status", "INTERNAL")), str(err.get("message", "upstream error"))
            )
        if pick(data, "usageMetadata"):
            self.usage = usage_to_openai_usage(pick(data, "usageMetadata"))
        out: list[dict[str, Any]] = []
        for n, cand in enumerate(shape.dicts(data.get("candidates"))):
            given = cand.get("index")
            index = given if isinstance(given, int) and not isinstance(given, bool) else n
            if index not in self._started:
                self._started.add(index)
                out.append(self._chunk(index, {"role": "assistant", "content": ""}))
            for part in shape.dicts(shape.as_dict(cand.get("content")).get("parts")):
                call = pick(part, "functionCall")
                if isinstance(part.get("text"), str) and part["text"]:
                    key = "reasoning_content" if part.get("thought") else "content"
                    out.append(self._chunk(index, {key: part["text"]}))
                elif isinstance(call, dict):
                    k = self._tool_counts[index]
                    self._tool_counts[index] += 1
                    out.append(
                        self._chunk(
                            index,
                            {
                                "tool_calls": [
                                    {
                                        "index": k,
                                        "id": _call_id(call, f"{self.id[-8:]}_{index}_{k}"),
                                        "type": "function",
                                        "function": {
                                            "name": call.get("name"),
                                            "arguments": json.dumps(call.get("args") or {}),
                                        },
                                    }
                                ]
                            },
                        )
                    )
            finish = pick(cand, "finishReason")
            if finish:
                reason = FINISH_TO_OPENAI.get(str(finish), "stop")
                if reason == "stop" and self._tool_counts[index]:
                    reason = "tool_calls"
                out.append(self._chunk(index, {}, reason))
        return out

    def finish(self) -> list[dict[str, Any]]:
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


class StreamFromOpenAI:
    """OpenAI chat chunks -> Gemini SSE payloads for a client. Text goes out as it comes; function calls are
    whole in Gemini, so their argument pieces are gathered and sent with the finish reason."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.response_id = uuid.uuid4().hex[:22]
        self.usage: TokenUsage | None = None
        self._finish: dict[int, str] = {}
        self._calls: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)

    def _payload(self, candidates: list[dict[str, Any]]) -> dict[str, Any]:
        return {"candidates": candidates, "modelVersion": self.model, "responseId": self.response_id}

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        chunk = normal_chunk(chunk)
        if chunk.get("usage"):
            self.usage = usage_from_openai(chunk["usage"])
        out: list[bytes] = []
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            delta = choice.get("delta") or {}
            parts: list[dict[str, Any]] = []
            if delta.get("reasoning_content"):
                parts.append({"text": delta["reasoning_content"], "thought": True})
            if delta.get("content"):
                parts.append({"text": delta["content"]})
            if parts:
                out.append(
                    sse(self._payload([{"content": {"parts": parts, "role": "model"}, "index": index}]))
                )
            for call in delta.get("tool_calls") or []:
                slot = self._calls[index].setdefault(
                    int(call.get("index", 0)), {"id": None, "name": "", "args": ""}
                )
                fn = call.get("function") or {}
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] += fn.get("name") or ""
                slot["args"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self._finish[index] = FINISH_FROM_OPENAI.get(str(choice["finish_reason"]), "STOP")
        return out

    def finish(self, usage: TokenUsage | None = None) -> list[bytes]:
        candidates = []
        for index in sorted(set(self._finish) | set(self._calls) or {0}):
            parts: list[dict[str, Any]] = []
            for _, slot in sorted(self._calls.get(index, {}).items()):
                try:
                    args = json.loads(slot["args"] or "{}")
                except ValueError:
                    args = {}
                parts.append({"functionCall": {"id": slot["id"], "name": slot["name"], "args": args}})
            candidates.append(
                {
                    "content": {"parts": parts or [{"text": ""}], "role": "model"},
                    "finishReason": self._finish.get(index, "STOP"),
                    "index": index,
                }
            )
        payload = self._payload(candidates)
        payload["usageMetadata"] = usage_from_openai_usage(usage or self.usage or TokenUsage())
        return [sse(payload)]

    def error(self, message: str, status: int = 500) -> list[bytes]:
        return [sse(error_body(status, "", message))]
