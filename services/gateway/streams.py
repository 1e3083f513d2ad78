"""Step 5 of the request path: forwarding an upstream stream to the client as it arrives, byte for byte
(OpenAI to OpenAI) or translated event by event, and recording it when it ends, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from services.gateway import clients, metrics, tokenizer
from services.gateway.attempts import Opened, Plan, close_response, close_response_now
from services.gateway.context import Gateway
from services.gateway.dialects import openai as dialect_openai
from services.gateway.dialects.errors import UpstreamStreamError
from services.gateway.dialects.openai import TokenUsage
from services.gateway.errors import (
    BadUpstream,
    GatewayError,
    UpstreamTimeout,
    stream_error_event,
)
from services.gateway.providers import openai as oai
from services.gateway.relay import Call, _usage_of, record_soon
from services.gateway.sse import SSEParser
from services.gateway.upstream_http import UpstreamError
from services.gateway.usage import Usage

# --- step 5: forwarding ------------------------------------------------------------------------------------


def _failed_mid_stream(gw: Gateway, call: Call, exc: BaseException) -> GatewayError:
    """The upstream stalled or broke after the answer started: too late for another channel, so the stream ends
    with an error event; the request and the channel are charged with it."""
    failed: GatewayError = (
        UpstreamTimeout("The upstream stopped sending mid-stream.")
        if isinstance(exc, TimeoutError)
        else BadUpstream("The upstream stream broke or reported an error mid-stream.")
    )
    call.fail(failed)
    metrics.child(metrics.UPSTREAM_ERRORS, call.channel_id, "mid_stream").inc()
    gw.breaker.failure(call.channel_id, "mid_stream")
    return failed


def _payload(event: bytes) -> bytes | None:
    """The data of an OpenAI SSE event (one `data:` line); None for anything else (a comment, `[DONE]`)."""
    if not event.startswith(b"data:"):
        return None
    data = event[5:].lstrip()
    return None if data == b"[DONE]" else data


class SSEUsageFilter:
    """Splits an OpenAI SSE byte stream into events, reads the usage chunk, and drops it when the client did
    not ask for usage. Complete events are forwarded as they arrive; a partial one waits for its end."""

    def __init__(self, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.usage: Usage | None = None
        self.payloads: list[bytes] = []  # data payloads, decoded only if the upstream reports no usage
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events of what has arrived, minus a usage-only chunk the client did not ask for.
        Raises UpstreamStreamError on an error event or malformed JSON (its text must not reach clients)."""
        self._buf += chunk
        end = self._buf.rfind(b"\n\n")
        if end < 0:
            return b""
        ready, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
        self.payloads.append(ready)
        events = ready.split(b"\n\n")
        datas = [d for d in map(_payload, events) if d is not None]
        if not datas:
            return ready
        # All the events that arrived, probed in one decode.
        probes = oai.probe_events(datas)
        drop = False
        for usage, usage_only in probes:
            if usage is not None:
                self.usage = usage
                drop = drop or (usage_only and not self.client_wants_usage)
        if not drop:
            return ready  # the common case: forward the bytes exactly as they came
        out = []
        for event in events:
            data = _payload(event)
            if data is not None and oai.probe_events([data])[0][1]:
                continue  # the usage-only chunk
            out.append(event)
        return b"\n\n".join(e for e in out if e) + b"\n\n"

    def rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest

    def counted_text(self) -> str:
        datas = []
        for blob in self.payloads:
            for event in blob.split(b"\n\n"):
                data = event[6:] if event.startswith(b"data: ") else b""
                if data and data != b"[DONE]":
                    datas.append(data)
        return oai.stream_text(datas)


def stream_body(
    gw: Gateway, call: Call, opened: Opened, client_wants_usage: bool, prompt_messages: Any
) -> AsyncIterator[bytes]:
    idle = gw.settings.idle_timeout_s
    sse = SSEUsageFilter(client_wants_usage)

    async def generate() -> AsyncIterator[bytes]:
        assert opened.chunks is not None
        ended = delivered = False
        rest = b""
        try:
            # When several events came at once, the first goes out before the others are read (each event is
            # still checked before it is forwarded): the client's first token waits for no other.
            first = opened.first
            cut = first.find(b"\n\n") + 2
            rest = first[cut:] if 2 <= cut < len(first) else b""
            out = sse.feed(first[:cut] if rest else first)
            call.ttft_ms = int((time.perf_counter() - call.started) * 1000)
            if out:
                yield out
            # Observed once the first chunk is on its way: the histogram is not the client's wait.
            metrics.child(metrics.TTFT, call.model).observe(call.ttft_ms / 1000)
            if rest:
                out, rest = sse.feed(rest), b""
                if out:
                    delivered = b"data: [DONE]" in out
                    yield out
            while True:
                try:
                    async with asyncio.timeout(idle):
                        chunk = await anext(opened.chunks)
                except StopAsyncIteration:
                    break
                out = sse.feed(chunk)
                if out:
                    # A client that has its [DONE] may hang up before the upstream's last bytes (the sync OpenAI
                    # SDK closes at once): the answer was delivered whole, so that is no disconnect.
                    delivered = delivered or b"data: [DONE]" in out
                    yield out
            rest = sse.rest()
            if rest:
                yield rest
            ended = True
        except (TimeoutError, UpstreamError, UpstreamStreamError) as exc:
            failed = _failed_mid_stream(gw, call, exc)
            yield stream_error_event(call.dialect, failed.status, failed.code, failed.message)
            ended = True
        finally:
            if not ended and not delivered:
                # The client went away (the server cancelled us): stop the upstream at once, keep the tally.
                call.status, call.error_code = 499, "client_disconnected"
            if rest and sse.usage is None:
                # The client left right after the first event: the rest had arrived with it and may hold the
                # upstream's usage report, which beats counting.
                with contextlib.suppress(UpstreamStreamError):
                    sse.feed(rest)
            if sse.usage is not None:
                # The common end, done here: a task for it would cost more than the work.
                close_response_now(opened.resp)
                call.usage = sse.usage
                record_soon(gw, call)
            else:
                gw.spawn(_finish_stream(gw, call, opened, sse, prompt_messages))

    return generate()


async def _finish_stream(gw: Gateway, call: Call, opened: Opened, sse: SSEUsageFilter, prompt_messages: Any) -> None:
    """A stream that ended without a usage report: counted with the tokenizer (which may still be loading)."""
    await close_response(opened.resp)
    if sse.usage is not None:
        call.usage = sse.usage
    else:
        # No usage report (the stream was cut, or the upstream does not send one): count with the tokenizer.
        await tokenizer.ready()
        call.usage = Usage(
            prompt_tokens=tokenizer.count_chat_prompt(prompt_messages),
            completion_tokens=tokenizer.count_text(sse.counted_text()),
        )
    record_soon(gw, call)


def _delta_text(chunk: dict[str, Any], into: list[str]) -> None:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            for name in ("content", "reasoning_content"):
                if isinstance(delta.get(name), str):
                    into.append(delta[name])
            for tc in delta.get("tool_calls") or ():
                fn = tc.get("function") if isinstance(tc, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    into.append(fn["arguments"])


def translated_stream_body(gw: Gateway, call: Call, opened: Opened, plan: Plan) -> AsyncIterator[bytes]:
    """A stream between different dialects: upstream events -> internal chunks -> the client's events."""
    idle = gw.settings.idle_timeout_s
    parser = SSEParser()
    upstream = opened.provider.Stream(opened.upstream_model)
    out = clients.stream_out(call.dialect, plan.body, call.model, sse=plan.sse)
    texts: list[str] = []
    reported: list[TokenUsage] = []

    def convert(events: list[tuple[str, bytes]], extra: list[dict[str, Any]] | None = None) -> bytes:
        frames: list[bytes] = []
        chunks = [c for name, data in events for c in upstream.feed(name, data)] + (extra or [])
        for c in chunks:
            u = dialect_openai.chunk_usage(c)
            if u is not None:
                reported.append(u)
            _delta_text(c, texts)
            frames += out.feed(c)
        return b"".join(frames)

    def final_usage() -> Usage:
        if reported:
            return _usage_of(reported[-1])
        return Usage(
            prompt_tokens=tokenizer.count_chat_prompt(plan.internal.get("messages")),
            completion_tokens=tokenizer.count_text("".join(texts)),
        )

    async def generate() -> AsyncIterator[bytes]:
        assert opened.chunks is not None
        ended = False
        try:
            data = convert(parser.feed(opened.first))
            call.ttft_ms = int((time.perf_counter() - call.started) * 1000)
            if data:
                yield data
            metrics.child(metrics.TTFT, call.model).observe(call.ttft_ms / 1000)
            while True:
                try:
                    async with asyncio.timeout(idle):
                        chunk = await anext(opened.chunks)
                except StopAsyncIteration:
                    break
                data = convert(parser.feed(chunk))
                if data:
                    yield data
            data = convert(parser.close(), upstream.finish())
            if not reported:
                await tokenizer.ready()
            call.usage = final_usage()
            u = call.usage
            yield data + b"".join(
                out.finish(
                    TokenUsage(
                        prompt_tokens=u.prompt_tokens,
                        completion_tokens=u.completion_tokens,
                        cached_tokens=u.cached_tokens,
                    )
                )
            )
            ended = True
        except (TimeoutError, UpstreamError, UpstreamStreamError, msgspec.DecodeError) as exc:
            failed = _failed_mid_stream(gw, call, exc)
            yield b"".join(out.error(failed.message, failed.status))
            ended = True
        finally:
            if not ended:
                call.status, call.error_code = 499, "client_disconnected"
            # Counting (if needed) happens in the background task: awaiting here may be impossible, the
            # request's task being cancelled when the client left.
            gw.spawn(_close_and_record(gw, call, opened, None if call.usage.total else final_usage))

    return generate()


async def _close_and_record(gw: Gateway, call: Call, opened: Opened, count: Any = None) -> None:
    await close_response(opened.resp)
    if count is not None:
        await tokenizer.ready()
        call.usage = count()
    record_soon(gw, call)
