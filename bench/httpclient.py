"""A small asyncio HTTP/1.1 client that times what a streaming client feels.

For each response it records when the request went out, when the headers arrived, when each complete SSE event
(`...\\n\\n`) arrived and when the last byte arrived. Raw sockets rather than an HTTP library, so the client
adds microseconds, not milliseconds, and every target is timed by the same few lines."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


class ProtocolError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    started: float  # perf_counter when the request was written
    headers_at: float
    event_times: list[float] = field(default_factory=list)  # arrival of each complete SSE event
    ended: float = 0.0

    @property
    def ttfb_ms(self) -> float:
        """Time to the first complete SSE event (to the headers for a non-streaming answer)."""
        first = self.event_times[0] if self.event_times else self.headers_at
        return (first - self.started) * 1000

    @property
    def total_ms(self) -> float:
        return (self.ended - self.started) * 1000

    def event_offsets_ms(self) -> list[float]:
        return [(t - self.started) * 1000 for t in self.event_times]


class Connection:
    """One keep-alive connection; requests on it run one after another."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    @property
    def local_port(self) -> int:
        assert self.writer is not None
        return int(self.writer.get_extra_info("sockname")[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        started = time.perf_counter()
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            resp = await self._read_response(started)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise ProtocolError(f"connection closed mid-response: {exc!r}") from exc
        if resp.headers.get("connection", "").lower() == "close":
            await self.close()
        return resp

    async def _read_response(self, started: float) -> Response:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        headers_at = time.perf_counter()
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError(f"bad status line {status_line!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        resp = Response(status=int(parts[1]), headers=headers, body=b"", started=started,
                        headers_at=headers_at)
        sse = _EventClock(resp)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            await self._read_chunked(sse)
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                data = await self.reader.read(min(remaining, 65536))
                if not data:
                    raise ConnectionError("eof in body")
                remaining -= len(data)
                sse.feed(data, time.perf_counter())
        else:  # read to close
            while data := await self.reader.read(65536):
                sse.feed(data, time.perf_counter())
            await self.close()
        resp.ended = time.perf_counter()
        resp.body = bytes(sse.body)
        return resp

    async def _read_chunked(self, sse: _EventClock) -> None:
        assert self.reader is not None
        buf = b""
        need: int | None = None  # bytes of the current chunk still to come (None: at a size line)
        while True:
            if need is None:
                if b"\r\n" not in buf:
                    data = await self.reader.read(65536)
                    if not data:
                        raise ConnectionError("eof in chunk size")
                    buf += data
                    continue
                size_line, buf = buf.split(b"\r\n", 1)
                need = int(size_line.split(b";", 1)[0], 16)
                if need == 0:
                    while b"\r\n" not in buf:  # the empty trailer line
                        data = await self.reader.read(65536)
                        if not data:
                            raise ConnectionError("eof in trailer")
                        buf += data
                    return
                continue
            if len(buf) < need + 2:
                # Hand over what is here now: its arrival time is the point of this client.
                take = min(len(buf), need)
                if take:
                    sse.feed(buf[:take], time.perf_counter())
                    buf = buf[take:]
                    need -= take
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("eof in chunk")
                buf += data
                if need == 0 and len(buf) >= 2:
                    buf = buf[2:]
                    need = None
                continue
            sse.feed(buf[:need], time.perf_counter())
            buf = buf[need + 2:]
            need = None


class _EventClock:
    """Collects the body and stamps each SSE event boundary with the time the bytes completing it arrived."""

    def __init__(self, resp: Response) -> None:
        self.resp = resp
        self.body = bytearray()

    def feed(self, data: bytes, at: float) -> None:
        start = max(0, len(self.body) - 1)
        self.body += data
        pos = start
        while (i := self.body.find(b"\n\n", pos)) != -1:
            self.resp.event_times.append(at)
            pos = i + 2
