"""Gemini upstreams: the internal (OpenAI chat) request translated, `x-goog-api-key` auth, and the answer and
its SSE stream (`alt=sse`) translated back by services.gateway.dialects.gemini."""

from __future__ import annotations

from typing import Any

import msgspec

from services.gateway.dialects import gemini as dialect

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def build(
    base_url: str, api_key: str, upstream_model: str, internal: dict[str, Any], stream: bool, request_id: str
) -> tuple[str, dict[str, str], bytes]:
    """Raises dialects.errors.TranslationError when the request cannot be expressed for Gemini."""
    body = dialect.request_from_openai(internal, upstream_model)
    headers = {"x-goog-api-key": api_key, "content-type": "application/json", "x-request-id": request_id}
    return base_url.rstrip("/") + dialect.upstream_path(upstream_model, stream), headers, _enc.encode(body)


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
