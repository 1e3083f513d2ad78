"""A small HTTP/1.1 client for upstream calls: keep-alive connections per origin on plain asyncio streams.

Why not httpx here: profiling the gateway under load (py-spy, 16 concurrent clients) put ~45% of a worker's
CPU inside httpx/httpcore for the one upstream call, mostly connection-pool bookkeeping (a readability poll of
every idle connection, anyio attribute lookups) on every request; with this client the worker's CPU per
request fell from ~5.4 ms to ~1.7 ms on the same (busy, shared) machine. The gateway needs far less: POST a
body, read the status and headers, then the body as it arrives (Content-Length, chunked, or to the end of the
connection). Timeouts are the caller's (asyncio.timeout around each step). The gateway's few internal calls to
keys and billing use it too, so a gateway worker does not import httpx at all (~11 MB of its RSS).

A connection is reused only after its response was read to the end; anything else (an error, a cancellation,
an early close by the caller) closes it. A request on a reused connection that the server had meanwhile closed
is sent again once on a fresh one, before any byte of an answer was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from urllib.parse import urlsplit

_MAX_HEADER_BYTES = 64 * 1024
_READ = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached or broke the HTTP exchange."""


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


Origin = tuple[str, str, int]  # scheme, host, port


@lru_cache(maxsize=1024)
def _target(url: str) -> tuple[Origin, str, bytes]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamConnectError(f"unsupported upstream URL scheme {parts.scheme!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    host_header = parts.hostname if default else f"{parts.hostname}:{port}"
    return (parts.scheme, parts.hostname, port), path, host_header.encode()


@lru_cache(maxsize=1024)
def _start_line(method: bytes, url: str) -> tuple[Origin, bytes]:
    """The origin, and the request line with the host header: the same for every request to one URL."""
    origin, path, host = _target(url)
    return origin, method + b" " + path.encode() + b" HTTP/1.1\r\nhost: " + host + b"\r\n"


class _Conn:
    __slots__ = ("reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Response:
    """Status and headers (names lower-cased); the body read with `aread()` or `aiter_raw()`, once."""

    def __init__(
        self,
        client: Client,
        origin: Origin,
        conn: _Conn,
        status: int,
        headers: dict[str, str],
    ) -> None:
        self._client = client
        self._origin = origin
        self._conn: _Conn | None = conn
        self.status_code = status
        self.headers = headers
        keep = headers.get("connection", "").lower() != "close"
        if status in (204, 304) or 100 <= status < 200:
            self._mode, self._left = "none", 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode, self._left = "chunked", 0
        elif "content-length" in headers:
            try:
                self._mode, self._left = "length", int(headers["content-length"])
            except ValueError:
                raise UpstreamProtocolError("malformed Content-Length") from None
        else:
            self._mode, self._left, keep = "close", 0, False
        self._keep = keep

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        try:
            if self._mode == "length":
                while self._left > 0:
                    data = await reader.read(min(self._left, _READ))
                    if not data:
                        raise UpstreamProtocolError("the upstream closed the connection mid-body")
                    self._left -= len(data)
                    yield data
            elif self._mode == "chunked":
                while True:
                    line = await reader.readuntil(b"\r\n")
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise UpstreamProtocolError("malformed chunk size") from None
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, if any
                            pass
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._mode == "close":
                while data := await reader.read(_READ):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError) as exc:
            self._discard()
            raise UpstreamProtocolError(f"the upstream broke the response: {type(exc).__name__}") from None
        except BaseException:
            self._discard()
            raise
        self._release()

    async def aread(self) -> bytes:
        return b"".join([part async for part in self.aiter_raw()])

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Give the connection back if the body was read to the end; otherwise close it."""
        if self._conn is not None:
            self._discard()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._keep:
                self._client._put(self._origin, conn)
            else:
                conn.close()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Client:
    def __init__(
        self,
        *,
        connect_timeout_s: float = 10.0,
        max_idle_per_origin: int = 1000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout_s
        self._idle: dict[Origin, list[_Conn]] = {}
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context or ssl.create_default_context()

    def _put(self, origin: Origin, conn: _Conn) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) < self._max_idle and not conn.reader.at_eof():
            conn.reused = True
            idle.append(conn)
        else:
            conn.close()

    def _take(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()
                continue
            return conn
        return None

    async def _open(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._connect(scheme, host, port)
        except TimeoutError:
            raise UpstreamConnectError("connecting to the upstream timed out") from None

    async def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        try:
            if scheme == "https":
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._ssl, server_hostname=host, limit=_MAX_HEADER_BYTES
                )
            else:
                reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEADER_BYTES)
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {type(exc).__name__}") from None
        return _Conn(reader, writer)

    async def post(
        self, url: str, headers: dict[str, str], body: bytes, written: Callable[[], None] | None = None
    ) -> Response:
        """Send the request and read the status and headers; the caller reads (or closes) the body. `written`
        is called once the request is on the wire, before its answer is awaited (each time it is written)."""
        return await self.request(b"POST", url, headers, body, written)

    async def request(
        self,
        method: bytes,
        url: str,
        headers: dict[str, str],
        body: bytes = b"",
        written: Callable[[], None] | None = None,
    ) -> Response:
        """Any method (the gateway's internal GETs to keys use it too); `post` for the upstream calls."""
        origin, start = _start_line(method, url)
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        request = b"".join((start, b"content-length: %d\r\n" % len(body), fields.encode(), b"\r\n", body))
        conn = self._take(origin)
        for attempt in range(2):
            if conn is None:
                conn = await self._open(origin)
            try:
                conn.writer.write(request)
                if written is not None:
                    written()
                await conn.writer.drain()
                raw = await conn.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                stale = conn.reused and attempt == 0 and not getattr(exc, "partial", b"")
                conn.close()
                if stale:
                    conn = None  # the server had closed the idle connection: once more on a fresh one
                    continue
                raise UpstreamProtocolError(f"the upstream broke the exchange: {type(exc).__name__}") from None
            except asyncio.LimitOverrunError:
                conn.close()
                raise UpstreamProtocolError("the upstream's response headers are too large") from None
            except BaseException:
                conn.close()
                raise
            try:
                status, parsed = _parse_head(raw)
                return Response(self, origin, conn, status, parsed)
            except UpstreamProtocolError:
                conn.close()
                raise
        raise UpstreamProtocolError("the upstream closed the connection")  # pragma: no cover - loop returns

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise UpstreamProtocolError("the upstream did not answer with HTTP/1.x")
    try:
        status = int(parts[1])
    except ValueError:
        raise UpstreamProtocolError("malformed status line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise UpstreamProtocolError("malformed header line")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers
