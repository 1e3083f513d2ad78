"""Client dialects on the translated path: turn a client's request into the internal (OpenAI chat) form, and
the internal answer and stream chunks back into what the client's SDK expects. The translations themselves
live in services.gateway.dialects; this module only picks them per dialect behind one small interface."""

from __future__ import annotations

from typing import Any, Protocol

from services.gateway.dialects import anthropic, gemini, responses
from services.gateway.dialects import openai as oai
from services.gateway.dialects.openai import TokenUsage


class StreamOut(Protocol):
    def feed(self, chunk: dict[str, Any]) -> list[bytes]: ...
    def finish(self, usage: TokenUsage | None = None) -> list[bytes]: ...
    def error(self, message: str, status: int) -> list[bytes]: ...


class _OpenAIStream:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        kept = oai.strip_usage_chunk(chunk, self.body)
        return [oai.data_frame(kept)] if kept is not None else []

    def finish(self, usage: TokenUsage | None = None) -> list[bytes]:
        return [oai.DONE]

    def error(self, message: str, status: int) -> list[bytes]:
        return [oai.data_frame(oai.error_body(status, "bad_upstream_response", message))]


class _ResponsesStream:
    def __init__(self, body: dict[str, Any], model: str) -> None:
        self.conv = responses.StreamFromChat(body, model)

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        return self.conv.feed(chunk)

    def finish(self, usage: TokenUsage | None = None) -> list[bytes]:
        return self.conv.finish(usage)

    def error(self, message: str, status: int) -> list[bytes]:
        return self.conv.error(message)


class _GeminiArray:
    """Gemini's `streamGenerateContent` without `alt=sse`: the same responses as one JSON array, sent piece by
    piece as they come (`[` first item, `,` each next one, `]` at the end)."""

    def __init__(self, conv: StreamOut) -> None:
        self.conv = conv
        self.started = False

    def _items(self, frames: list[bytes]) -> list[bytes]:
        out = []
        for frame in frames:
            item = frame.strip().removeprefix(b"data:").strip()
            out.append((b",\r\n" if self.started else b"[") + item)
            self.started = True
        return out

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        return self._items(self.conv.feed(chunk))

    def finish(self, usage: TokenUsage | None = None) -> list[bytes]:
        return [*self._items(self.conv.finish(usage)), b"]" if self.started else b"[]"]

    def error(self, message: str, status: int) -> list[bytes]:
        return [*self._items(self.conv.error(message, status)), b"]"]


def to_internal(dialect: str, body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """Raises dialects.errors.TranslationError (-> 400 naming the field)."""
    if dialect == "anthropic":
        return anthropic.request_to_openai(body)
    if dialect == "gemini":
        return gemini.request_to_openai(body, model, stream)
    if dialect == "responses":
        return responses.request_to_chat(body)
    return body


def response_from_internal(
    dialect: str,
    internal: dict[str, Any],
    body: dict[str, Any],
    model: str,
) -> dict[str, Any]:
    if dialect == "anthropic":
        return anthropic.response_from_openai(internal, model)
    if dialect == "gemini":
        return gemini.response_from_openai(internal, model)
    if dialect == "responses":
        return responses.response_from_chat(internal, body)
    return internal


def stream_out(dialect: str, body: dict[str, Any], model: str, *, sse: bool = True) -> StreamOut:
    if dialect == "anthropic":
        return anthropic.StreamFromOpenAI(model)
    if dialect == "gemini":
        return gemini.StreamFromOpenAI(model) if sse else _GeminiArray(gemini.StreamFromOpenAI(model))
    if dialect == "responses":
        return _ResponsesStream(body, model)
    return _OpenAIStream(body)
