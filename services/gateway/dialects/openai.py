"""OpenAI Chat Completions: the gateway's internal form, and the passthrough helpers for OpenAI-compatible
upstreams (rewrite only `model`; ask for usage in streams; read usage back)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from services.gateway.dialects import shape
from services.gateway.dialects.errors import UnsupportedField, UpstreamStreamError

# Fields a translator may leave in the internal form although OpenAI's API lacks them (they came from an
# Anthropic or Gemini client and another such upstream can take them). An OpenAI upstream cannot.
EXTENSION_FIELDS = ("top_k",)

DONE = b"data: [DONE]\n\n"

_enc = msgspec.json.Encoder()


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Usage in OpenAI's terms: prompt includes cached tokens, completion includes reasoning tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_openai(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    total = _int(usage.get("total_tokens"))
    if not completion and total > prompt:
        completion = total - prompt
    details = usage.get("prompt_tokens_details") or {}
    out_details = usage.get("completion_tokens_details") or {}
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=_int(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        reasoning_tokens=_int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0,
    )


def usage_to_openai(u: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def response_usage(resp: Any) -> TokenUsage | None:
    return usage_from_openai(resp.get("usage")) if isinstance(resp, dict) else None


def chunk_usage(chunk: Any) -> TokenUsage | None:
    """The usage a stream chunk carries (the last chunk when `include_usage` was asked), if any."""
    return usage_from_openai(chunk.get("usage")) if isinstance(chunk, dict) else None


def raise_for_stream_error(chunk: Any) -> None:
    """OpenAI reports a failure after the stream began as a `data: {"error": {...}}` event."""
    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
        err = shape.as_dict(chunk["error"])
        raise UpstreamStreamError(
            str(err.get("type") or "api_error"), str(err.get("message") or "upstream error")
        )


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether the client itself asked for the usage chunk (the gateway always asks upstream)."""
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def to_upstream(body: dict[str, Any], upstream_model: str, *, translated: bool = False) -> dict[str, Any]:
    """The body for an OpenAI-compatible upstream: `model` rewritten and, for a stream, usage asked for.

    A client's own OpenAI body goes through untouched otherwise (an OpenAI-compatible upstream may know fields
    OpenAI does not); a body translated from another dialect must not carry fields OpenAI lacks.
    """
    if translated:
        for name in EXTENSION_FIELDS:
            if body.get(name) is not None:
                raise UnsupportedField(name, "openai")
    out = dict(body)
    out["model"] = upstream_model
    if out.get("stream"):
        opts = out.get("stream_options")
        out["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return out


def strip_usage_chunk(chunk: dict[str, Any], client_body: dict[str, Any]) -> dict[str, Any] | None:
    """What to send a client of a chunk: the usage-only chunk only when the client asked for it."""
    if not chunk.get("choices") and chunk.get("usage") is not None and not wants_usage(client_body):
        return None
    if not wants_usage(client_body) and "usage" in chunk:
        chunk = {k: v for k, v in chunk.items() if k != "usage"}
    return chunk


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def data_frame(payload: Any) -> bytes:
    return b"data: " + _enc.encode(payload) + b"\n\n"


def now() -> int:
    return int(time.time())


# --- lenient reading: what an upstream sent, reduced to the shapes the converters use ---


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _index(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _normal_call(call: Any) -> dict[str, Any] | None:
    if not isinstance(call, dict):
        return None
    fn = shape.as_dict(call.get("function"))
    return {
        "index": _index(call.get("index")),
        "id": _opt_str(call.get("id")),
        "type": "function",
        "function": {"name": _opt_str(fn.get("name")), "arguments": _opt_str(fn.get("arguments")) or ""},
    }


def _normal_message(msg: Any) -> dict[str, Any]:
    m = msg if isinstance(msg, dict) else {}
    out: dict[str, Any] = {
        "role": "assistant",
        "content": _opt_str(m.get("content")),
        "reasoning_content": _opt_str(m.get("reasoning_content")),
    }
    calls = [c for c in map(_normal_call, shape.as_list(m.get("tool_calls"))) if c is not None]
    out["tool_calls"] = calls
    return out


def normal_chunk(chunk: Any) -> dict[str, Any]:
    """A chat chunk with every field the stream converters read present and of the right type."""
    c = chunk if isinstance(chunk, dict) else {}
    choices = []
    for choice in shape.dicts(c.get("choices")):
        delta = _normal_message(choice.get("delta"))
        choices.append(
            {
                "index": _index(choice.get("index")),
                "delta": delta,
                "finish_reason": _opt_str(choice.get("finish_reason")),
            }
        )
    return {"choices": choices, "usage": c.get("usage") if isinstance(c.get("usage"), dict) else None}


def normal_completion(resp: Any) -> dict[str, Any]:
    """A whole chat completion with every field the answer converters read present and of the right type."""
    r = resp if isinstance(resp, dict) else {}
    choices = []
    for choice in shape.dicts(r.get("choices")):
        choices.append(
            {
                "index": _index(choice.get("index")),
                "message": _normal_message(choice.get("message")),
                "finish_reason": _opt_str(choice.get("finish_reason")),
            }
        )
    return {
        "id": _opt_str(r.get("id")),
        "model": _opt_str(r.get("model")),
        "created": r.get("created") if isinstance(r.get("created"), int) else None,
        "choices": choices or [{"index": 0, "message": _normal_message(None), "finish_reason": None}],
        "usage": r.get("usage") if isinstance(r.get("usage"), dict) else None,
    }
