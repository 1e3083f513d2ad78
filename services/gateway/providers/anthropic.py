"""Anthropic Messages upstreams: the internal (OpenAI chat) request translated, `x-api-key` auth, and the
answer and its event stream translated back by services.gateway.dialects.anthropic."""

from __future__ import annotations

from typing import Any

import msgspec

from services.gateway.dialects import anthropic as dialect

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
