"""Anthropic Messages upstreams: the internal (OpenAI chat) request translated, `x-api-key` auth, and the
answer and its event stream translated back by services.gateway.dialects.anthropic."""

from __future__ import annotations

from typing import Any

import msgspec

from services.gateway.dialects import anthropic as dialect
from services.gateway.providers.stream_head import Head, first_event

API_VERSION = "2023-06-01"
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def build(
    base_url: str, api_key: str, upstream_model: str, internal: dict[str, Any], stream: bool, request_id: str
) -> tuple[str, dict[str, str], bytes]:
    """Raises dialects.errors.TranslationError when the request cannot be expressed for Anthropic."""
    body = dialect.request_from_openai(internal, upstream_model)
    headers = {
        "x-api-key": api_key,
        "anthropic-version": API_VERSION,
        "content-type": "application/json",
        "x-request-id": request_id,
    }
    return base_url.rstrip("/") + "/v1/messages", headers, _enc.encode(body)


class _ErrorHead(msgspec.Struct):
    type: Any = None
    error: Any = None


_decode_error_head = msgspec.json.Decoder(_ErrorHead).decode
# The request's own fault: another channel would refuse it the same way.
_INVALID = frozenset({"invalid_request_error", "request_too_large"})


def stream_head(head: bytes) -> Head:
    """Whether the first event of a stream is an answer or an error (see stream_head.Head)."""
    if head.startswith(b"event: message_start"):
        return "answer"  # the normal first event: no parse
    event = first_event(head)
    if event is None:
        return "incomplete"
    name, data = event
    if name not in ("error", "") or not data:
        return "answer"
    try:
        parsed = _decode_error_head(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        parsed = _ErrorHead()
    if name != "error" and parsed.type != "error":
        return "answer"
    error = parsed.error if isinstance(parsed.error, dict) else {}
    return "invalid_request" if error.get("type") in _INVALID else "error"


def response_to_internal(raw: bytes, model: str) -> dict[str, Any]:
    return dialect.response_to_openai(_dec.decode(raw))


class Stream:
    """Anthropic SSE events -> internal chat chunks (the last one carries usage)."""

    def __init__(self, model: str) -> None:
        self._conv = dialect.StreamToOpenAI()

    def feed(self, event: str, data: bytes) -> list[dict[str, Any]]:
        return self._conv.feed(event, _dec.decode(data))

    def finish(self) -> list[dict[str, Any]]:
        return []
