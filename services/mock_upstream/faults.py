"""Fault injection, chosen per request.

Two ways to ask, same vocabulary: the `x-mock-fault` header (`status=429;retry_after=2;delay_first_ms=50`),
or a suffix on the model name after `@` (`gpt-4o-mini@status=500`, or the shorthand `gpt-4o-mini@fail500`),
because a gateway may not forward custom headers but always forwards the model. Items are separated by `;`,
`,` or `&`; when both are given, the header wins item by item. An unknown item is an error: a typo in a test
must not silently turn into a passing happy path.

- `status=N`           answer with that HTTP status and an error body in the dialect's shape
- `retry_after=S`      with `status`, a `Retry-After: S` header
- `delay_first_ms=N`   wait N ms before the response starts (no byte is sent before)
- `delay_chunk_ms=N`   wait N ms between stream events
- `disconnect_after=N` drop the connection after N stream events (a non-stream reply: after half its body)
                       (the server logs a traceback for each: that is how an ASGI app aborts a response)
- `error_after=N`      after N stream events, report an error inside the stream (each dialect's way: an
                       `event: error` for Anthropic, a `data: {"error": ...}` for OpenAI and Gemini), then end;
                       `error_after=0` is a 200 whose very first event is the error
- `error_status=N`     with `error_after`, the in-stream error is the one the dialect gives with status N
                       (400: `invalid_request_error` / `INVALID_ARGUMENT`); default a server-side one
- `chunks=N`           number of content pieces a streamed reply is cut into (default 20)
- `cached=N`           report N prompt tokens as read from the provider's cache
- `tool_calls=N`       when the model calls a tool, it makes N calls at once (parallel tool calls)
- `no_usage=1`         report no usage at all (as some OpenAI-compatible servers do): the caller must count
- `garbage=1`          answer 200 with a body that is not JSON (a stream: one good event, then junk)
- `burst=1`            a streamed reply's events all leave in one write, as from an upstream that batches them

"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import msgspec
from litestar import Request

HEADER = "x-mock-fault"
DEFAULT_CHUNKS = 20

_SHORTHAND = re.compile(r"^fail(\d{3})$")
_SEPARATORS = re.compile(r"[;,&]")


class FaultSpecError(ValueError):
    """The fault description does not parse; the message names the offending item."""


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    status: int | None = None
    retry_after: int | None = None
    delay_first_ms: int = 0
    delay_chunk_ms: int = 0
    disconnect_after: int | None = None
    chunks: int = DEFAULT_CHUNKS
    error_after: int | None = None
    error_status: int | None = None
    cached: int | None = None
    no_usage: int = 0
    tool_calls: int = 1
    garbage: int = 0
    burst: int = 0


_INT_FIELDS = set(Faults.__struct_fields__)


def _items(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for raw in _SEPARATORS.split(spec):
        item = raw.strip()
        if not item:
            continue
        short = _SHORTHAND.match(item)
        if short:
            out["status"] = int(short.group(1))
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _INT_FIELDS:
            raise FaultSpecError(f"unknown mock fault item {item!r}")
        try:
            out[key] = int(value.strip())
        except ValueError:
            raise FaultSpecError(f"mock fault item {item!r} needs an integer") from None
        if out[key] < 0:
            raise FaultSpecError(f"mock fault item {item!r} must not be negative")
    for name in ("status", "error_status"):
        if name in out and not 100 <= out[name] <= 599:
            raise FaultSpecError(f"mock fault {name} {out[name]} is not an HTTP status")
    if out.get("chunks") == 0:
        raise FaultSpecError("mock fault chunks must be at least 1")
    return out


def split_model(model: str) -> tuple[str, str]:
    """`gpt-4o@fail500` -> (`gpt-4o`, `fail500`)."""
    base, _, spec = model.partition("@")
    return base, spec


def parse(header: str | None, model: str | None) -> tuple[str, Faults]:
    """The model name without its fault suffix, and the faults asked for by the suffix and the header."""
    base, spec = split_model(model or "")
    items = _items(spec)
    items.update(_items(header or ""))
    return base, Faults(**items)


async def wait_before_first_byte(faults: Faults, request: Request[Any, Any, Any]) -> bool:
    """Sleep `delay_first_ms`; True when the client hung up meanwhile (the caller records a cancellation)."""
    if faults.delay_first_ms <= 0:
        return False

    async def client_left() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.create_task(client_left())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=faults.delay_first_ms / 1000)
        return bool(done)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
