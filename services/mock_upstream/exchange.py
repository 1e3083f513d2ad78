"""One request's life in the mock, shared by the three dialects: read the body, check the key, apply the
faults, record it, and send the reply (all at once, or paced as a stream that may be cut on purpose)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from services.mock_upstream import faults as faults_mod
from services.mock_upstream.faults import Faults, FaultSpecError
from services.mock_upstream.stats import Entry, Stats

log = logging.getLogger("faregate.mock_upstream")

# (status, message, kind) -> an error response in the dialect's own shape; kind is a hint such as "auth".
ErrorShape = Callable[[int, str, str | None, dict[str, str] | None], Response[Any]]

# 499 is nginx's "client closed request": nobody reads it, it only marks the record.
CLIENT_CLOSED = 499


class DroppedConnection(Exception):
    """Raised inside a response body to make the server abort the connection, as a crashing upstream would."""


@dataclass
class Exchange:
    body: dict[str, Any]
    model: str
    faults: Faults
    entry: Entry
    error: ErrorShape

    def reply(self, payload: Any, status: int = 200) -> Response[Any]:
        data = msgspec.json.encode(payload)
        if self.faults.garbage:
            # What a misconfigured proxy in front of a provider answers.
            self.entry.status = status
            self.entry.outcome = "completed"
            return Response(
                b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                status_code=status,
                media_type="text/html",
            )
        self.entry.status = status
        if self.faults.disconnect_after is not None:
            # Promise the whole body, deliver half of it, then drop the line.
            self.entry.outcome = "disconnected"
            return Stream(
                _truncated(data),
                status_code=status,
                media_type="application/json",
                headers={"content-length": str(len(data))},
            )
        self.entry.outcome = "completed"
        return Response(data, status_code=status, media_type="application/json")

    def stream(
        self, frames: Sequence[bytes], media_type: str = "text/event-stream", error_frame: bytes | None = None
    ) -> Response[Any]:
        """Send `frames` paced by the faults; `error_frame` is the dialect's in-stream error report."""
        self.entry.status = 200
        outcome = "completed"
        if self.faults.garbage:
            frames = [*frames[:1], b'data: {"choices": [{"delta": \n\n']
        elif self.faults.error_after is not None and error_frame is not None:
            frames = [*frames[: self.faults.error_after], error_frame]
            outcome = "stream_error"
        if self.faults.burst:
            frames = [b"".join(frames)]
        return Stream(
            _paced(frames, self.faults, self.entry, outcome),
            media_type=media_type,
            headers={"cache-control": "no-cache"},
        )


async def _truncated(data: bytes) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    raise DroppedConnection("mock fault: disconnect")


async def _paced(frames: Sequence[bytes], faults: Faults, entry: Entry, outcome: str) -> AsyncIterator[bytes]:
    try:
        for i, frame in enumerate(frames):
            if faults.disconnect_after is not None and i >= faults.disconnect_after:
                entry.outcome = "disconnected"
                raise DroppedConnection("mock fault: disconnect mid-stream")
            if i and faults.delay_chunk_ms:
                await asyncio.sleep(faults.delay_chunk_ms / 1000)
            yield frame
            entry.events_sent += 1
        entry.outcome = outcome
    finally:
        if entry.outcome == "in_progress":
            entry.outcome = "cancelled"


def stats_of(request: Request[Any, Any, Any]) -> Stats:
    return request.app.state["stats"]  # type: ignore[no-any-return]


async def open_exchange(
    request: Request[Any, Any, Any],
    *,
    dialect: str,
    error: ErrorShape,
    api_key: str | None,
    model: str | None = None,
    stream: bool | None = None,
) -> Exchange | Response[Any]:
    """Everything before the reply. Returns the exchange to answer, or the response to send instead."""
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError:
        return error(400, "We could not parse the JSON body of your request.", "invalid_json", None)
    if not isinstance(body, dict):
        return error(400, "The request body must be a JSON object.", "invalid_json", None)
    raw_model = model if model is not None else body.get("model")
    if raw_model is not None and not isinstance(raw_model, str):
        return error(400, "'model' must be a string.", "invalid_request", None)
    header = request.headers.get(faults_mod.HEADER)
    try:
        base_model, faults = faults_mod.parse(header, raw_model)
    except FaultSpecError as exc:
        return error(400, str(exc), "invalid_request", None)
    is_stream = bool(body.get("stream")) if stream is None else stream
    entry = stats_of(request).begin(
        path=request.url.path,
        dialect=dialect,
        model=base_model,
        stream=is_stream,
        fault=";".join(filter(None, [faults_mod.split_model(raw_model or "")[1], header or ""])),
        api_key=api_key,
        request_id=request.headers.get("x-request-id"),
        body=body,
    )

    if await faults_mod.wait_before_first_byte(faults, request):
        entry.outcome = "cancelled"
        entry.status = CLIENT_CLOSED
        return Response(b"", status_code=CLIENT_CLOSED)
    if faults.status is not None and faults.status >= 400:
        headers = {"retry-after": str(faults.retry_after)} if faults.retry_after is not None else None
        kind = "rate_limit" if faults.status == 429 else None
        return _refuse(
            entry,
            error(faults.status, f"Injected fault: the upstream answered {faults.status}.", kind, headers),
        )

    expected: str = request.app.state["api_key"]
    if not api_key or (expected and api_key != expected):
        return _refuse(
            entry,
            error(401, "Incorrect API key provided." if api_key else "No API key provided.", "auth", None),
        )
    if not base_model:
        return _refuse(entry, error(400, "you must provide a model parameter", "invalid_request", None))
    return Exchange(body=body, model=base_model, faults=faults, entry=entry, error=error)


def _refuse(entry: Entry, response: Response[Any]) -> Response[Any]:
    entry.outcome = "error"
    entry.status = response.status_code or 500
    return response


def fail(exchange: Exchange, status: int, message: str, kind: str | None = None) -> Response[Any]:
    """A validation error found after the exchange opened."""
    return _refuse(exchange.entry, exchange.error(status, message, kind, None))
