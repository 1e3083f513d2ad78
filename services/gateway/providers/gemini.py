"""Gemini upstreams: the internal (OpenAI chat) request translated, `x-goog-api-key` auth, and the answer and
its SSE stream (`alt=sse`) translated back by services.gateway.dialects.gemini."""

from __future__ import annotations

from typing import Any

import msgspec

from services.gateway.dialects import gemini as dialect
from services.gateway.providers.stream_head import Head, first_event

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def build(
    base_url: str, api_key: str, upstream_model: str, internal: dict[str, Any], stream: bool, request_id: str
) -> tuple[str, dict[str, str], bytes]:
    """Raises dialects.errors.TranslationError when the request cannot be expressed for Gemini."""
    body = dialect.request_from_openai(internal, upstream_model)
    headers = {"x-goog-api-key": api_key, "content-type": "application/json", "x-request-id": request_id}
    return base_url.rstrip("/") + dialect.upstream_path(upstream_model, stream), headers, _enc.encode(body)


def stream_head(head: bytes) -> Head:
    """Whether the first event of a stream is an answer or an error (see stream_head.Head). Besides SSE, an
    upstream may answer a plain JSON error object (or the array form, `[{"error": ...}]`) with its 200."""
    if head.startswith(b'data: {"candidates"'):
        return "answer"  # the normal first event: no parse
    body = head.lstrip()
    if body[:1] in (b"{", b"["):
        try:
            value = _dec.decode(body)
        except msgspec.DecodeError:
            return "incomplete"  # not whole yet (the caller bounds how long it reads)
        if isinstance(value, list):
            value = value[0] if value else None
        return _verdict(value)
    event = first_event(head)
    if event is None:
        return "incomplete"
    data = event[1]
    if not data.startswith(b"{"):
        return "answer"
    try:
        return _verdict(_dec.decode(data))
    except msgspec.DecodeError:
        return "answer"  # malformed is the forwarding's to report, as for any later event


def _verdict(value: Any) -> Head:
    error = value.get("error") if isinstance(value, dict) else None
    if error is None:
        return "answer"
    # INVALID_ARGUMENT is the request's own fault; UNAVAILABLE, INTERNAL, RESOURCE_EXHAUSTED... are the channel's.
    return "invalid_request" if isinstance(error, dict) and error.get("status") == "INVALID_ARGUMENT" else "error"


def response_to_internal(raw: bytes, model: str) -> dict[str, Any]:
    return dialect.response_to_openai(_dec.decode(raw), model)


class Stream:
    """Gemini SSE payloads -> internal chat chunks; `finish` adds the closing chunk with usage."""

    def __init__(self, model: str) -> None:
        self._conv = dialect.StreamToOpenAI(model)

    def feed(self, event: str, data: bytes) -> list[dict[str, Any]]:
        return self._conv.feed(_dec.decode(data))

    def finish(self) -> list[dict[str, Any]]:
        return self._conv.finish()
