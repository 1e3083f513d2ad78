"""OpenAI-compatible upstreams (OpenAI, DeepSeek, Qwen, ... and the mock): the passthrough provider.

Requests go out as the client sent them with only `model` rewritten (and, for streams, usage asked for);
answers come back byte for byte. Only the usage is decoded. A client of another dialect reaching such a
channel goes through `build` / `response_to_internal` / `Stream` (the translated path).
"""

from __future__ import annotations

from typing import Any

import msgspec

from services.gateway.dialects import openai as dialect
from services.gateway.dialects.errors import UpstreamStreamError
from services.gateway.providers.stream_head import Head, first_event
from services.gateway.usage import Usage

_enc = msgspec.json.Encoder()


class _Details(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = 0
    prompt_tokens_details: _Details | None = None
    # the images API (gpt-image-1) reports input/output tokens under these names
    input_tokens: int | None = None
    output_tokens: int | None = None


class _WithUsage(msgspec.Struct):
    # Only usage is read; the rest of the answer is skipped by the decoder (still checked to be valid JSON).
    usage: _Usage | None = None


_decode_with_usage = msgspec.json.Decoder(_WithUsage).decode


def url(base_url: str, endpoint_path: str) -> str:
    """`endpoint_path` is the OpenAI path after /v1, e.g. "/chat/completions"; base_url ends in /v1."""
    return base_url.rstrip("/") + endpoint_path


def headers(api_key: str, request_id: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {api_key}",
        "content-type": "application/json",
        "x-request-id": request_id,
    }


def chat_body(body: dict[str, Any], upstream_model: str, stream: bool) -> bytes:
    out = dict(body)
    out["model"] = upstream_model
    if stream:
        opts = out.get("stream_options")
        out["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return _enc.encode(out)


def plain_body(body: dict[str, Any], upstream_model: str) -> bytes:
    out = dict(body)
    out["model"] = upstream_model
    return _enc.encode(out)


def _usage(u: _Usage) -> Usage:
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    prompt = u.prompt_tokens or u.input_tokens or 0
    completion = u.completion_tokens or u.output_tokens or 0
    if not completion and u.total_tokens and u.total_tokens > prompt:
        completion = u.total_tokens - prompt
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached or 0)


def response_usage(raw: bytes) -> Usage | None:
    """Usage of a whole (non-stream) answer; raises msgspec.DecodeError when the answer is not JSON."""
    parsed = _decode_with_usage(raw)
    return _usage(parsed.usage) if parsed.usage is not None else None


_NULL = msgspec.Raw(b"null")


class _Probe(msgspec.Struct):
    """One stream event, decoded only as far as the gateway needs: nested objects are skipped (but still
    checked to be well-formed JSON), so this costs about a microsecond per chunk."""

    usage: _Usage | None = None
    choices: msgspec.Raw = _NULL
    error: msgspec.Raw = _NULL


_decode_probes = msgspec.json.Decoder(list[_Probe]).decode


def probe_events(datas: list[bytes]) -> list[tuple[Usage | None, bool]]:
    """(usage, is_usage_only_chunk) of each `data:` payload of a batch, decoded in one call (a JSON array of
    them): per payload that is a fraction of a microsecond, where a decode each cost about two. Raises
    UpstreamStreamError when the upstream reports an error inside the stream or any payload is not JSON."""
    try:
        parsed = _decode_probes(b"[" + b",".join(datas) + b"]")
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamStreamError("malformed", "the upstream sent a malformed stream event") from None
    if len(parsed) != len(datas):  # a payload like `1,2` would pass as two array items
        raise UpstreamStreamError("malformed", "the upstream sent a malformed stream event")
    out: list[tuple[Usage | None, bool]] = []
    for event in parsed:
        if event.error is not _NULL and bytes(event.error) != b"null":
            raise UpstreamStreamError("upstream_error", "the upstream reported an error mid-stream")
        if event.usage is None:
            out.append(_NO_USAGE)
        else:
            out.append((_usage(event.usage), bytes(event.choices).strip() in (b"[]", b"null")))
    return out


_NO_USAGE: tuple[Usage | None, bool] = (None, False)


class _ErrorHead(msgspec.Struct):
    error: Any = None  # only this is built; the rest of the event is skipped


_decode_error_head = msgspec.json.Decoder(_ErrorHead).decode

# `invalid_request_error` is also how OpenAI spells a bad key or an unknown model: the channel's fault, not
# the request's.
_CHANNEL_CODES = frozenset({"invalid_api_key", "model_not_found"})


def stream_head(head: bytes) -> Head:
    """Whether the first event of a stream is an answer or an error (see stream_head.Head)."""
    if head.startswith(b'data: {"id"'):
        return "answer"  # the normal first chunk: no parse
    event = first_event(head)
    if event is None:
        return "incomplete"
    data = event[1]
    if not data.startswith(b"{"):
        return "answer"
    try:
        error = _decode_error_head(data).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "answer"  # malformed is the forwarding's to report, as for any later event
    if error is None:
        return "answer"
    if (
        isinstance(error, dict)
        and error.get("type") == "invalid_request_error"
        and error.get("code") not in _CHANNEL_CODES
    ):
        return "invalid_request"
    return "error"


class _Function(msgspec.Struct):
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def stream_text(data_payloads: list[bytes]) -> str:
    """The generated text of a stream, to count when the upstream reported no usage."""
    parts: list[str] = []
    for data in data_payloads:
        try:
            chunk = _decode_chunk(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        for c in chunk.choices or ():
            if c.delta is not None:
                parts.append(c.delta.content or "")
                parts.append(c.delta.reasoning_content or "")
                for tc in c.delta.tool_calls or ():
                    parts.append((tc.function.arguments or "") if tc.function else "")
    return "".join(parts)


class _Message(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _FullChoice(msgspec.Struct):
    message: _Message | None = None


class _Full(msgspec.Struct):
    choices: list[_FullChoice] | None = None


def response_text(raw: bytes) -> str:
    """All generated text of a whole answer (content, reasoning, tool arguments), for counting."""
    try:
        full = msgspec.json.decode(raw, type=_Full)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    parts: list[str] = []
    for c in full.choices or ():
        if c.message is None:
            continue
        parts += [c.message.content or "", c.message.reasoning_content or ""]
        parts += [(tc.function.arguments or "") if tc.function else "" for tc in c.message.tool_calls or ()]
    return "".join(parts)


# --- the translated path (a client of another dialect reaching an OpenAI-compatible upstream) ----------

_dec = msgspec.json.Decoder()


def build(
    base_url: str, api_key: str, upstream_model: str, internal: dict[str, Any], stream: bool, request_id: str
) -> tuple[str, dict[str, str], bytes]:
    body = dialect.to_upstream(internal, upstream_model, translated=True)
    return url(base_url, "/chat/completions"), headers(api_key, request_id), _enc.encode(body)


def response_to_internal(raw: bytes, model: str) -> dict[str, Any]:
    out = _dec.decode(raw)
    if not isinstance(out, dict):
        raise msgspec.DecodeError("not a JSON object")
    return out


class Stream:
    """OpenAI SSE payloads -> chunk dicts (already the internal form)."""

    def __init__(self, model: str) -> None:
        pass

    def feed(self, event: str, data: bytes) -> list[dict[str, Any]]:
        if data == b"[DONE]":
            return []
        chunk = _dec.decode(data)
        if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
            err = chunk["error"] if isinstance(chunk["error"], dict) else {}
            raise UpstreamStreamError(str(err.get("type", "api_error")), str(err.get("message", "")))
        return [chunk] if isinstance(chunk, dict) else []

    def finish(self) -> list[dict[str, Any]]:
        return []
