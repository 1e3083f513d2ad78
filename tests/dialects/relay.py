"""A test-only relay: the smallest server that chains the translators the way the gateway does (client
dialect -> internal OpenAI chat -> upstream dialect, and back), in front of the mock upstream. It proves the
translators' output is what the official SDKs accept, before and apart from the real gateway.

Paths are `/<upstream dialect>/<the client's own path>`, e.g. `/anthropic/v1/chat/completions` is an OpenAI
client reaching an Anthropic upstream. Serve with
`granian --interface asgi --factory tests.dialects.relay:create_app` (env MOCK_URL = the mock's base URL).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from litestar import Litestar, Request, Response, post
from litestar.response import Stream

from services.gateway.dialects import anthropic, gemini, openai, responses
from services.gateway.dialects.errors import TranslationError, UpstreamStreamError

KEY = "sk-relay-upstream"
_OPENAI_HEADERS = {"authorization": f"Bearer {KEY}"}
_ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
_GEMINI_HEADERS = {"x-goog-api-key": KEY}


async def sse_frames(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, str]]:
    name: str | None = None
    data: list[str] = []
    async for line in lines:
        if not line.strip():
            if data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        yield name, "\n".join(data)


class Upstream:
    """One upstream dialect behind the relay: build its request, read its answer as internal chat."""

    def __init__(self, dialect: str, base: str) -> None:
        self.dialect = dialect
        self.base = base

    def request(self, internal: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
        model = str(internal["model"])
        stream = bool(internal.get("stream"))
        if self.dialect == "anthropic":
            return (
                self.base + "/v1/messages",
                _ANTHROPIC_HEADERS,
                anthropic.request_from_openai(internal, model),
            )
        if self.dialect == "gemini":
            return (
                self.base + gemini.upstream_path(model, stream),
                _GEMINI_HEADERS,
                gemini.request_from_openai(internal, model),
            )
        return (
            self.base + "/v1/chat/completions",
            _OPENAI_HEADERS,
            openai.to_upstream(internal, model, translated=True),
        )

    def response(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        if self.dialect == "anthropic":
            return anthropic.response_to_openai(body)
        if self.dialect == "gemini":
            return gemini.response_to_openai(body, model)
        return body

    async def chunks(
        self, frames: AsyncIterator[tuple[str | None, str]], model: str
    ) -> AsyncIterator[dict[str, Any]]:
        if self.dialect == "anthropic":
            a = anthropic.StreamToOpenAI()
            async for name, data in frames:
                for c in a.feed(str(name), json.loads(data)):
                    yield c
        elif self.dialect == "gemini":
            g = gemini.StreamToOpenAI(model)
            async for _, data in frames:
                for c in g.feed(json.loads(data)):
                    yield c
            for c in g.finish():
                yield c
        else:
            async for _, data in frames:
                if data != "[DONE]":
                    chunk = json.loads(data)
                    openai.raise_for_stream_error(chunk)
                    yield chunk


class Client:
    """One client dialect in front of the relay."""

    def __init__(
        self, dialect: str, body: dict[str, Any], model: str | None = None, stream: bool = False
    ) -> None:
        self.dialect = dialect
        self.body = body
        self.model = model or str(body.get("model"))
        self.stream = stream or bool(body.get("stream"))

    def internal(self) -> dict[str, Any]:
        if self.dialect == "anthropic":
            return anthropic.request_to_openai(self.body)
        if self.dialect == "gemini":
            return gemini.request_to_openai(self.body, self.model, self.stream)
        if self.dialect == "responses":
            return responses.request_to_chat(self.body)
        return dict(self.body)

    def response(self, internal: dict[str, Any]) -> dict[str, Any]:
        if self.dialect == "anthropic":
            return anthropic.response_from_openai(internal, self.model)
        if self.dialect == "gemini":
            return gemini.response_from_openai(internal, self.model)
        if self.dialect == "responses":
            return responses.response_from_chat(internal, self.body)
        return internal

    async def frames(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        """The client's stream; an upstream's mid-stream error ends it with the client's error event."""
        if self.dialect == "openai":
            try:
                async for c in chunks:
                    kept = openai.strip_usage_chunk(c, self.body)
                    if kept is not None:
                        yield openai.data_frame(kept)
            except UpstreamStreamError as exc:
                yield openai.data_frame(openai.error_body(502, "bad_upstream_response", exc.message))
                return
            yield openai.DONE
            return
        conv: Any = {
            "anthropic": lambda: anthropic.StreamFromOpenAI(self.model),
            "gemini": lambda: gemini.StreamFromOpenAI(self.model),
            "responses": lambda: responses.StreamFromChat(self.body, self.model),
        }[self.dialect]()
        try:
            async for c in chunks:
                for frame in conv.feed(c):
                    yield frame
        except UpstreamStreamError as exc:
            for frame in conv.error(exc.message):
                yield frame
            return
        for frame in conv.finish():
            yield frame

    def error(self, status: int, message: str, field: str | None = None) -> Response[Any]:
        body: dict[str, Any]
        if self.dialect == "anthropic":
            body = anthropic.error_body(status, "invalid_request_error", message)
        elif self.dialect == "gemini":
            body = gemini.error_body(status, "invalid_request_error", message)
        else:
            body = openai.error_body(status, "invalid_request_error", message, field)
        return Response(body, status_code=status)


async def relay(request: Request[Any, Any, Any], upstream_dialect: str, client: Client) -> Response[Any]:
    base = os.environ["MOCK_URL"]
    up = Upstream(upstream_dialect, base)
    try:
        url, headers, body = up.request(client.internal())
    except TranslationError as exc:
        return client.error(400, exc.message, exc.field)
    fault = request.headers.get("x-mock-fault")
    if fault:
        headers = {**headers, "x-mock-fault": fault}
    http: httpx.AsyncClient = request.app.state["http"]
    if not client.stream:
        r = await http.post(url, headers=headers, json=body)
        if r.status_code != 200:
            return client.error(502 if r.status_code < 500 else r.status_code, "upstream error")
        return Response(client.response(up.response(r.json(), client.model)))

    async def generate() -> AsyncIterator[bytes]:
        async with http.stream("POST", url, headers=headers, json=body) as r:
            async for frame in client.frames(up.chunks(sse_frames(r.aiter_lines()), client.model)):
                yield frame

    return Stream(generate(), media_type="text/event-stream")


async def _body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return json.loads(await request.body())  # type: ignore[no-any-return]


@post("/{upstream:str}/v1/chat/completions", status_code=200)
async def chat(request: Request[Any, Any, Any], upstream: str) -> Response[Any]:
    return await relay(request, upstream, Client("openai", await _body(request)))


@post("/{upstream:str}/v1/responses", status_code=200)
async def responses_api(request: Request[Any, Any, Any], upstream: str) -> Response[Any]:
    return await relay(request, upstream, Client("responses", await _body(request)))


@post("/{upstream:str}/v1/messages", status_code=200)
async def messages(request: Request[Any, Any, Any], upstream: str) -> Response[Any]:
    return await relay(request, upstream, Client("anthropic", await _body(request)))


@post(
    ["/{upstream:str}/v1beta/models/{target:str}", "/{upstream:str}/v1/models/{target:str}"], status_code=200
)
async def generate_content(request: Request[Any, Any, Any], upstream: str, target: str) -> Response[Any]:
    model, _, action = target.rpartition(":")
    return await relay(
        request,
        upstream,
        Client("gemini", await _body(request), model, stream=action == "streamGenerateContent"),
    )


def create_app() -> Litestar:
    async def open_http(app: Litestar) -> None:
        app.state["http"] = httpx.AsyncClient(timeout=30)

    async def close_http(app: Litestar) -> None:
        await app.state["http"].aclose()

    return Litestar(
        [chat, responses_api, messages, generate_content], on_startup=[open_http], on_shutdown=[close_http]
    )
