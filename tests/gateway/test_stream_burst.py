"""A stream whose events arrive several to a read (an upstream that batches them, or a fast one): the first event
goes to the client before the others are read, and a client that leaves right after it is still billed from the
upstream's own usage report, which arrived with it, rather than by counting."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from services.gateway import streams
from services.gateway.attempts import Opened
from services.gateway.context import Gateway
from services.gateway.relay import Call
from services.gateway.usage import Usage


def _events() -> bytes:
    chunk = b'{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"%s"}}]}'
    usage = (b'{"id":"c1","object":"chat.completion.chunk","choices":[],'
             b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,'
             b'"prompt_tokens_details":{"cached_tokens":4}}}')
    parts = [chunk % w for w in (b"one", b"two", b"three")] + [usage, b"[DONE]"]
    return b"".join(b"data: " + p + b"\n\n" for p in parts)


async def _nothing_more() -> Any:
    return
    yield  # an async generator that is already at its end: everything came in the first read


def _stream(call: Call) -> tuple[Any, Any]:
    gw = SimpleNamespace(settings=SimpleNamespace(idle_timeout_s=5.0, record_delay_s=0.002), unrecorded=[],
                         record_timer=None)
    opened = Opened(cast(Any, None), cast(Any, None), cast(Any, None), "m", chunks=_nothing_more(), first=_events())
    return gw, streams.stream_body(cast(Gateway, gw), call, opened, True, [])


async def test_the_first_event_goes_out_alone_and_the_rest_follows_whole() -> None:
    call = Call(request_id="r1", dialect="openai", endpoint="chat", client_ip="")
    gw, body = _stream(call)
    sent = [piece async for piece in body]
    try:
        assert sent[0] == _events().split(b"\n\n")[0] + b"\n\n"
        assert b"".join(sent) == _events()
        assert call.status == 200 and call.usage == Usage(prompt_tokens=9, completion_tokens=3, cached_tokens=4)
    finally:
        gw.record_timer.cancel()


async def test_a_client_leaving_after_the_first_event_is_billed_from_the_report_that_came_with_it() -> None:
    call = Call(request_id="r2", dialect="openai", endpoint="chat", client_ip="")
    gw, body = _stream(call)
    first = await anext(body)
    await body.aclose()  # what the server does when the client has gone
    try:
        assert first.startswith(b'data: {"id":"c1"') and first.count(b"\n\n") == 1
        assert call.status == 499 and call.error_code == "client_disconnected"
        assert call.usage == Usage(prompt_tokens=9, completion_tokens=3, cached_tokens=4)
        assert gw.unrecorded == [call]  # recorded with that usage, no counting task started
    finally:
        gw.record_timer.cancel()
