"""A lean, pipelined Redis client for the gateway's hot path.

Why: issue 10 wants ~250 µs of gateway CPU per request and we were at ~420 µs. py-spy put ~22% of a gateway
worker's CPU inside redis-py (connection-pool bookkeeping, Retry wrappers, command packing, one `wait_for` per
call) for just two EVALSHA calls per request plus the occasional GET. Here a call costs a few µs of Python:

- one connection per client, an `asyncio.Protocol` (no StreamReader/Writer layers);
- commands are pipelined: each call appends its encoded bytes to an outgoing buffer and a future to a FIFO, and
  the buffer is written once per event-loop turn, so under load many commands leave in one `write`;
- replies are parsed by `hiredis.Reader` (C) and resolve the futures in order; commands are packed by
  `hiredis.pack_command` (C, about 1 µs less than a Python join for an admit.lua EVALSHA);
- no per-call timeout: one timer, armed only while something is pending, checks the oldest command sent; if it
  waited longer than `command_timeout_s` the connection is dropped and every pending call fails with RespTimeout.

It does not do: cluster, sentinel, pub/sub, RESP3, MULTI/EXEC helpers, unix sockets, or retries of commands
(a call that fails on a lost connection raises; the next call reconnects). Replies are bytes, never decoded.
Blocking commands (BLPOP, WAIT...) would hold every call queued behind them on the one connection: not here.
Everything else in Faregate keeps using redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

Arg = bytes | str | int

# hiredis's stub types the argument as a 1-tuple (`Tuple[X]` for `Tuple[X, ...]`); this is what it really takes.
_pack: Callable[[tuple[Arg, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]


class RespError(Exception):
    """The server answered with an error reply (`-ERR ...`); the connection is fine."""


class RespConnectionError(ConnectionError):
    """Cannot connect, or the connection was lost with the call pending (its effect is unknown)."""


class RespTimeout(RespConnectionError):
    """No answer within `command_timeout_s`: the connection was treated as dead and dropped."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    username: str | None
    password: str | None
    db: int
    tls: bool


def parse_url(url: str) -> Address:
    """`redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (redis:// or rediss://)")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ValueError(f"Redis URL database must be a number, not {path!r}") from None
    return Address(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        db=db,
        tls=parts.scheme == "rediss",
    )


class _Connection(asyncio.Protocol):
    """One socket: the outgoing buffer, the FIFO of futures awaiting replies, and the stall timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, command_timeout_s: float) -> None:
        self._loop = loop
        self._timeout = command_timeout_s
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=RespError)
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._outgoing: list[bytes] = []
        # (commands written so far, loop time of that write): the oldest unanswered command's send time is the
        # first batch whose count exceeds the replies received. One entry per write, not per command.
        self._batches: collections.deque[tuple[int, float]] = collections.deque()
        self._written = 0
        self._answered = 0
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check here.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        try:
            while (reply := reader.gets()) is not False:
                fut = pending.popleft()
                self._answered += 1
                if fut.done():  # its caller was cancelled: the reply is read and dropped, the FIFO stays aligned
                    continue
                if isinstance(reply, RespError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._fail(RespConnectionError(f"Redis protocol error: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RespConnectionError("Redis connection lost" + (f": {exc}" if exc else "")))

    # -- sending --

    def request(self, command: bytes, now: bool = False) -> asyncio.Future[Any]:
        """Queue `command`; it is written with whatever else this turn of the loop queues (one write for many).
        `now`: written at once if the connection is idle (nothing queued, nothing unanswered), where there is
        no batch to wait for and the reply is on someone's critical path."""
        fut = self._loop.create_future()
        if self.closed:
            fut.set_exception(RespConnectionError("Redis connection closed"))
            return fut
        idle = not self._pending and not self._outgoing
        self._pending.append(fut)
        if now and idle:
            self._outgoing.append(command)
            self._flush()
            return fut
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(command)
        return fut

    def _flush(self) -> None:
        if self.closed or self._transport is None or not self._outgoing:
            return
        outgoing = self._outgoing
        self._transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])
        self._written += len(outgoing)
        outgoing.clear()
        now = self._loop.time()
        self._batches.append((self._written, now))
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._timeout, self._check_stall)

    def _check_stall(self) -> None:
        self._timer = None
        batches = self._batches
        while batches and batches[0][0] <= self._answered:
            batches.popleft()
        if not batches or self.closed:
            return  # nothing written is unanswered: the next write re-arms the timer
        deadline = batches[0][1] + self._timeout
        if self._loop.time() >= deadline:
            self._fail(RespTimeout(f"no Redis reply within {self._timeout:g} s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_stall)

    # -- teardown --

    def _fail(self, exc: RespConnectionError) -> None:
        """Dead connection: close the socket and fail every pending call at once."""
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._outgoing.clear()
        self._batches.clear()
        pending, self._pending = self._pending, collections.deque()
        for fut in pending:
            if not fut.done():
                fut.set_exception(exc)

    def close(self) -> None:
        self._fail(RespConnectionError("Redis client closed"))


class Resp:
    """A single pipelined connection to one Redis server, connected lazily and reconnected on the next call
    after it is lost. Safe to share among every task on one event loop (not across loops or threads)."""

    def __init__(
        self, address: Address, *, connect_timeout_s: float = 2.0, command_timeout_s: float = 2.0
    ) -> None:
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, connect_timeout_s: float = 2.0, command_timeout_s: float = 2.0) -> Resp:
        return cls(parse_url(url), connect_timeout_s=connect_timeout_s, command_timeout_s=command_timeout_s)

    async def execute(self, *args: Arg) -> Any:
        """Send one command; its reply as bytes, int, None or a (nested) list. An error reply raises RespError."""
        command = _pack(args)
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connected()
        return await conn.request(command)

    def send(self, *args: Arg, now: bool = False) -> asyncio.Future[Any]:
        """Queue one command now and return the future of its reply, without awaiting anything: a command sent
        here leaves before any command queued after it, from any task (Redis answers one connection in order).
        `now`: see `_Connection.request`. Needs the connection up: raises RespConnectionError when it is not
        (`execute` connects)."""
        conn = self._conn
        if conn is None or conn.closed:
            raise RespConnectionError("Redis not connected")
        return conn.request(_pack(args), now)

    def script(self, text: str) -> Script:
        return Script(self, text)

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- connecting --

    async def _connected(self) -> _Connection:
        if self._closed:
            raise RespConnectionError("Redis client closed")
        # At most one attempt in flight: every caller waits for it and shares its outcome, so a down Redis
        # costs one connect per wave of callers, not one per call.
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._connect())
            task.add_done_callback(self._connect_done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                raise RespConnectionError("Redis client closed") from None  # aclose(), not our caller, cancelled
            raise

    def _connect_done(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here too, so an attempt whose callers were all cancelled logs nothing

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        addr = self.address
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self.command_timeout_s),
                    addr.host,
                    addr.port,
                    ssl=ssl.create_default_context() if addr.tls else None,
                )
                # Sent before any queued command: callers are waiting on this task, not yet on the connection.
                if addr.password is not None:
                    auth = (b"AUTH", addr.username, addr.password) if addr.username else (b"AUTH", addr.password)
                    await conn.request(_pack(auth))
                if addr.db:
                    await conn.request(_pack((b"SELECT", addr.db)))
        except TimeoutError:
            if conn is not None:
                conn.close()
            raise RespConnectionError(
                f"cannot connect to Redis at {addr.host}:{addr.port}: no answer in {self.connect_timeout_s:g} s"
            ) from None
        except (OSError, RespError) as exc:  # RespConnectionError is an OSError; RespError: AUTH/SELECT refused
            if conn is not None:
                conn.close()
            raise RespConnectionError(f"cannot connect to Redis at {addr.host}:{addr.port}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if self._closed:  # aclose() ran while we were connecting
            conn.close()
            raise RespConnectionError("Redis client closed")
        self._conn = conn
        return conn


class Script:
    """A Lua script called by EVALSHA with its sha1 computed locally; a server that does not know it yet (restart,
    SCRIPT FLUSH) gets it by one EVAL, which also caches it there. Replies are returned as Redis gave them."""

    def __init__(self, client: Resp, text: str) -> None:
        self.client = client
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.execute(b"EVALSHA", self.sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.client.execute(b"EVAL", self.text, len(keys), *keys, *args)

    def send(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = (), now: bool = False) -> asyncio.Future[Any]:
        """EVALSHA queued now (`Resp.send`: ordered before anything sent later); await `reply` for the result."""
        return self.client.send(b"EVALSHA", self.sha, len(keys), *keys, *args, now=now)

    async def reply(self, sent: asyncio.Future[Any], keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        """The result of a `send` with the same keys and args; a server that did not know the script runs it now
        by EVAL (later than the send, so only for a script whose effect may come late: the first call after a
        Redis restart or SCRIPT FLUSH)."""
        try:
            return await sent
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.client.execute(b"EVAL", self.text, len(keys), *keys, *args)
