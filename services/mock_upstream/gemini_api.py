"""The Gemini (Google AI) wire format: generateContent, streamGenerateContent (SSE or JSON array),
countTokens, models, errors. Field names are camelCase on the wire; snake_case is accepted too, as Google's
server does."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from services.mock_upstream import content
from services.mock_upstream.exchange import Exchange, fail, open_exchange

MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "text-embedding-004")
ACTIONS = ("generateContent", "streamGenerateContent", "countTokens")

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "status": _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
        }
    }


def error_response(
    status: int, message: str, kind: str | None = None, headers: dict[str, str] | None = None
) -> Response[Any]:
    if kind == "auth":
        # Google answers a bad key with 400 and a missing one with 403, not 401.
        status, message = (
            (400, "API key not valid. Please pass a valid API key.")
            if message.startswith("Incorrect")
            else (403, "Method doesn't allow unregistered callers. Please use an API key.")
        )
    return Response(
        msgspec.json.encode(error_body(status, message)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def api_key(request: Request[Any, Any, Any]) -> str | None:
    return request.headers.get("x-goog-api-key") or request.query_params.get("key") or None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def pick(d: Any, camel: str) -> Any:
    """A field by its camelCase name or its snake_case twin."""
    if not isinstance(d, dict):
        return None
    if camel in d:
        return d[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return d.get(snake)


class PromptParts(msgspec.Struct, kw_only=True):
    texts: list[str]
    messages: int
    images: int
    ask_weather: bool


def read_prompt(body: dict[str, Any]) -> PromptParts | str:
    texts: list[str] = []
    images = 0
    system = pick(body, "systemInstruction")
    if system is not None:
        if not isinstance(system, dict):
            return "Invalid value at 'system_instruction'"
        texts += [str(p.get("text", "")) for p in _list(system.get("parts")) if isinstance(p, dict)]
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    last_user = ""
    for i, item in enumerate(contents):
        if not isinstance(item, dict) or not isinstance(item.get("parts"), list):
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
        role = item.get("role", "user")
        if role not in ("user", "model", "function"):
            return f"Please use a valid role: user, model. (contents[{i}].role)"
        own: list[str] = []
        answered = False
        for part in item["parts"]:
            if not isinstance(part, dict):
                return f"Invalid value at 'contents[{i}].parts'"
            if "text" in part:
                if not part.get("thought"):
                    own.append(str(part["text"]))
            elif pick(part, "inlineData") is not None or pick(part, "fileData") is not None:
                images += 1
            elif isinstance(pick(part, "functionCall"), dict):
                call = pick(part, "functionCall")
                own += [str(call.get("name", "")), json.dumps(call.get("args") or {})]
            elif isinstance(pick(part, "functionResponse"), dict):
                reply = pick(part, "functionResponse")
                own += [str(reply.get("name", "")), json.dumps(reply.get("response") or {})]
                answered = True
        texts += own
        if role == "user":
            last_user = "" if answered else " ".join(own)
    last_role = contents[-1].get("role", "user")
    return PromptParts(
        texts=texts,
        messages=len(contents),
        images=images,
        ask_weather=last_role == "user" and "weather" in last_user.lower(),
    )


def declarations(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in _list(body.get("tools")):
        out += [d for d in _list(pick(tool, "functionDeclarations")) if isinstance(d, dict) and d.get("name")]
    return out


def chosen_function(body: dict[str, Any], parts: PromptParts) -> dict[str, Any] | None:
    fns = declarations(body)
    config = pick(pick(body, "toolConfig"), "functionCallingConfig")
    config = config if isinstance(config, dict) else {}
    mode = str(config.get("mode", "AUTO")).upper()
    allowed = pick(config, "allowedFunctionNames") or []
    if allowed:
        fns = [f for f in fns if f["name"] in allowed]
    if not fns or mode == "NONE":
        return None
    if mode == "ANY":
        return fns[0]
    if parts.ask_weather:
        return next((f for f in fns if "weather" in f["name"].lower()), fns[0])
    return None


class Candidate(msgspec.Struct, kw_only=True):
    index: int
    text: str | None = None
    calls: list[dict[str, Any]] = msgspec.field(default_factory=list)
    thought: str | None = None  # the thinking summary, sent only when includeThoughts asks for it
    finish: str = "STOP"
    tokens: int = 0
    thought_tokens: int = 0


def decide(
    body: dict[str, Any], model: str, parts: PromptParts, index: int, min_tokens: int, n_calls: int = 1
) -> Candidate:
    seed = content.seed_of(model, pick(body, "systemInstruction"), body.get("contents"), index)
    gen = pick(body, "generationConfig") or {}
    limit = pick(gen, "maxOutputTokens")
    budget = limit if isinstance(limit, int) and limit > 0 else 1 << 30
    fn = chosen_function(body, parts)
    if fn is not None:
        schema = pick(fn, "parameters") or pick(fn, "parametersJsonSchema") or {}
        calls = [
            {"name": fn["name"], "args": content.fake_value(schema, "", seed + k)}
            for k in range(max(n_calls, 1))
        ]
        tokens = sum(content.count_tokens(c["name"] + json.dumps(c["args"])) for c in calls)
        return Candidate(index=index, calls=calls, tokens=tokens)
    mime = pick(gen, "responseMimeType")
    if mime == "application/json":
        text = content.json_reply(seed, pick(gen, "responseSchema") or pick(gen, "responseJsonSchema"))
    else:
        text = content.reply_text(seed, min_tokens)
    hits = [text.find(s) for s in _list(pick(gen, "stopSequences")) if isinstance(s, str) and s and s in text]
    if hits:
        text = text[: min(hits)]
    text, cut = content.truncate_to_tokens(text, budget)
    candidate = Candidate(
        index=index, text=text, finish="MAX_TOKENS" if cut else "STOP", tokens=content.count_tokens(text)
    )
    thinking = pick(gen, "thinkingConfig")
    if isinstance(thinking, dict) and (pick(thinking, "thinkingLevel") or pick(thinking, "thinkingBudget")):
        thought = content.reasoning_text(seed)
        candidate.thought_tokens = content.count_tokens(thought)
        if pick(thinking, "includeThoughts"):
            candidate.thought = thought
    return candidate


def usage_metadata(prompt: int, cached: int, candidates: list[Candidate]) -> dict[str, Any]:
    out_tokens = sum(c.tokens for c in candidates)
    thoughts = sum(c.thought_tokens for c in candidates)
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": out_tokens,
        "totalTokenCount": prompt + out_tokens + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if cached:
        usage["cachedContentTokenCount"] = cached
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    return usage


def candidate_json(c: Candidate, parts: list[dict[str, Any]], finish: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": c.index}
    if finish:
        out["finishReason"] = c.finish
    return out


def parts_of(c: Candidate) -> list[dict[str, Any]]:
    thought = [{"text": c.thought, "thought": True}] if c.thought else []
    return thought + ([{"functionCall": call} for call in c.calls] if c.calls else [{"text": c.text or ""}])


def stream_payloads(
    ex: Exchange, candidates: list[Candidate], usage: dict[str, Any], response_id: str
) -> list[dict[str, Any]]:
    payloads: list[dict[str, Any]] = []
    for c in candidates:
        if c.calls:
            pieces: list[list[dict[str, Any]]] = [[{"functionCall": call} for call in c.calls]]
        else:
            pieces = [[{"text": p}] for p in content.split_text(c.text or "", ex.faults.chunks)] or [
                [{"text": ""}]
            ]
        if c.thought:
            pieces = [[{"text": c.thought, "thought": True}], *pieces]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            payloads.append(
                {
                    "candidates": [candidate_json(c, piece, last)],
                    "modelVersion": ex.model,
                    "responseId": response_id,
                }
            )
    if not ex.faults.no_usage:
        payloads[-1]["usageMetadata"] = usage
    return payloads


# The SDK uses v1beta by default and v1 for some calls; the parameter shares its name with OpenAI's
# GET /v1/models/{model_id} so both live on one path.
@post(["/v1beta/models/{model_id:str}", "/v1/models/{model_id:str}"], status_code=200)
async def model_action(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[Any]:
    model, _, action = model_id.rpartition(":")
    if action not in ACTIONS:
        return error_response(404, f"Method {action!r} is not found for model {model!r}.")
    streaming = action == "streamGenerateContent"
    opened = await open_exchange(
        request,
        dialect="gemini",
        error=error_response,
        api_key=api_key(request),
        model=model,
        stream=streaming,
    )
    if isinstance(opened, Response):
        return opened
    ex = opened
    body = ex.body
    if action == "countTokens":
        # countTokens takes the same contents, or a whole generateContentRequest.
        body = pick(body, "generateContentRequest") or body
    parts = read_prompt(body)
    if isinstance(parts, str):
        return fail(ex, 400, parts)
    tools_text = [json.dumps(declarations(body), sort_keys=True)] if declarations(body) else []
    prompt = content.prompt_tokens(parts.texts + tools_text, parts.messages, parts.images)
    if action == "countTokens":
        return ex.reply({"totalTokens": prompt})
    gen = pick(body, "generationConfig") or {}
    count = pick(gen, "candidateCount") or 1
    if not isinstance(count, int) or not 1 <= count <= 8:
        return fail(ex, 400, "candidateCount must be between 1 and 8")
    limit = pick(gen, "maxOutputTokens")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        return fail(ex, 400, "maxOutputTokens must be a positive integer")
    thinking = pick(gen, "thinkingConfig")
    if isinstance(thinking, dict) and pick(thinking, "thinkingLevel") and pick(thinking, "thinkingBudget"):
        return fail(ex, 400, "You can only set only one of thinking budget and thinking level.")
    cached = content.cached_tokens(prompt, ex.faults.cached)
    candidates = [
        decide(body, ex.model, parts, i, ex.faults.chunks, ex.faults.tool_calls) for i in range(count)
    ]
    usage = usage_metadata(prompt, cached, candidates)
    response_id = uuid.uuid4().hex[:22]
    if streaming:
        payloads = stream_payloads(ex, candidates, usage, response_id)
        if request.query_params.get("alt") == "sse":
            overloaded = error_body(ex.faults.error_status or 503, "The model is overloaded.")
            failure = b"data: " + msgspec.json.encode(overloaded) + b"\r\n\r\n"
            return ex.stream(
                [b"data: " + msgspec.json.encode(p) + b"\r\n\r\n" for p in payloads], error_frame=failure
            )
        # Without alt=sse Google streams one JSON array, element by element.
        encoded = [msgspec.json.encode(p) for p in payloads]
        frames = [(b"[" if i == 0 else b",\r\n") + e for i, e in enumerate(encoded)]
        frames[-1] += b"]"
        return ex.stream(frames, media_type="application/json")
    payload: dict[str, Any] = {
        "candidates": [candidate_json(c, parts_of(c), True) for c in candidates],
        "usageMetadata": usage,
        "modelVersion": ex.model,
        "responseId": response_id,
    }
    if ex.faults.no_usage:
        del payload["usageMetadata"]
    return ex.reply(payload)


def gemini_models() -> dict[str, Any]:
    return {
        "models": [
            {
                "name": f"models/{m}",
                "displayName": m,
                "version": "001",
                "supportedGenerationMethods": list(ACTIONS),
            }
            for m in MODELS
        ]
    }


@get("/v1beta/models")
async def list_models() -> dict[str, Any]:
    return gemini_models()


HANDLERS: list[HTTPRouteHandler] = [model_action, list_models]
