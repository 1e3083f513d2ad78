"""The gateway's server entry: the paid client endpoints are served straight off the server's interface (RSGI in
production, ASGI in the in-process tests); everything else (ops, model listings, internal endpoints, unknown
paths) goes through Litestar.

Why not Litestar for these too: on the bench (bench/hotpath.py, one core) Litestar's routing, request and
response objects, its exception and our request-id middleware cost ~80 µs of the ~400 µs of CPU a relayed
request took, for endpoints that need none of it: one POST body in, one body or stream out. Here a request is a
dict lookup, the headers decoded once, the body read with its size limit, and the answer handed over.

`GatewayApp` is still a Litestar app (lifespan, state, TestClient, every other route), with `__call__` (ASGI) and
`__rsgi__` (RSGI, shared/rsgi.py bridging the rest to Litestar) taking the paid paths first. The two differ only
in `Incoming`'s transport methods (`AsgiIncoming`, `RsgiIncoming`); the handlers see one request type.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from litestar import Litestar
from litestar.plugins import PluginProtocol
from litestar.plugins.core import MsgspecDIPlugin

from services.gateway.errors import BodyTooLarge, GatewayError, error_body, headers_for
from shared import rsgi
from shared.events import new_id
from shared.logs import request_id_var
from shared.web import well_formed_request_id

log = logging.getLogger("faregate.gateway")

# The raw ASGI callables and messages (plain dicts here; Litestar's TypedDicts fit its own handlers, not this).
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = "application/json"

# A stream's client is watched for leaving once the stream has run this long (see _send_stream).
WATCH_AFTER_S = 0.02


class ClientGone(Exception):
    """The client hung up; nothing more can be sent."""


class Incoming(ABC):
    """One client request, whichever server interface brought it: lower-cased headers (decoded once), the query
    on demand, the peer and the request id. `body` reads the body under a size limit; `disconnected` returns
    once the client has gone (call it only after the body was read).

    The request id is always minted here, never taken from the client: it names the request's usage event and
    reservation, which billing and admission count once, so a client repeating an X-Request-Id of its own would
    otherwise be charged for the first request only. A well-formed client id is kept as `client_request_id`,
    echoed as X-Client-Request-Id (as OpenAI's API does)."""

    __slots__ = ("_query", "_raw_query", "client_request_id", "headers", "method", "path", "peer", "request_id")

    def __init__(self, method: str, path: str, headers: dict[str, str], raw_query: str, peer: str) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self._raw_query = raw_query
        self.peer = peer
        self.request_id = new_id()
        theirs = headers.get("x-client-request-id") or headers.get("x-request-id")
        self.client_request_id = theirs if theirs and well_formed_request_id(theirs) == theirs else ""
        self._query: dict[str, str] | None = None

    @property
    def query_params(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self._raw_query)) if self._raw_query else {}
        return self._query

    def _declared_too_large(self, limit: int) -> bool:
        declared = self.headers.get("content-length")
        return declared is not None and declared.isdigit() and int(declared) > limit

    @abstractmethod
    async def body(self, limit: int) -> bytes:
        """The whole body, refused with 413 past `limit` bytes (from Content-Length before reading, if sent)."""

    @abstractmethod
    async def disconnected(self) -> None:
        """Returns once the client has gone."""

    @abstractmethod
    async def answer(self, reply: Reply) -> None:
        """Hand the reply to the server: whole, or chunk by chunk as the stream produces them."""

    def header_list(self, reply: Reply) -> list[tuple[str, str]]:
        headers = [("content-type", reply.media_type), ("x-request-id", self.request_id)]
        if self.client_request_id:
            headers.append(("x-client-request-id", self.client_request_id))
        if reply.headers:
            headers += reply.headers.items()
        return headers


def _header_dict(pairs: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in pairs:
        # A repeated header is one comma-separated list (RFC 9110 5.3); X-Forwarded-For relies on that.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class AsgiIncoming(Incoming):
    """A request off the ASGI messages (the in-process test client; `FAREGATE_GATEWAY_SERVER_INTERFACE=asgi`)."""

    __slots__ = ("receive", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        super().__init__(
            scope["method"],
            scope["path"],
            _header_dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]),
            scope.get("query_string", b"").decode("latin-1"),
            client[0] if client else "",
        )
        self.receive = receive
        self.send = send

    async def body(self, limit: int) -> bytes:
        if self._declared_too_large(limit):
            raise _too_large(limit)
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > limit:
                raise _too_large(limit)
            return body
        parts = [body]
        size = len(body)
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
            if not message.get("more_body"):
                return b"".join(parts)

    async def disconnected(self) -> None:
        # With the body read, the next ASGI message is http.disconnect, and it arrives only when the client leaves.
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def answer(self, reply: Reply) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.header_list(reply)]
        send = self.send
        if reply.stream is None:
            headers.append((b"content-length", str(len(reply.body)).encode()))
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
            return

        async def start(first: bytes) -> Callable[[bytes], Awaitable[None]]:
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})

            async def chunk(data: bytes) -> None:
                await send({"type": "http.response.body", "body": data, "more_body": True})

            await chunk(first)
            return chunk

        async def end() -> None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await _stream(self, reply.stream, start, end)


class RsgiIncoming(Incoming):
    """A request off granian's RSGI protocol (how `faregate gateway` serves): the answer goes to the server in
    one call, the body comes in one await."""

    __slots__ = ("proto",)

    def __init__(self, scope: Any, proto: Any) -> None:
        client = scope.client
        super().__init__(scope.method, scope.path, _header_dict(scope.headers.items()), scope.query_string,
                         client.rpartition(":")[0].strip("[]") if client else "")
        self.proto = proto

    async def body(self, limit: int) -> bytes:
        if self._declared_too_large(limit):
            raise _too_large(limit)
        if "content-length" in self.headers:
            body: bytes = await self.proto()  # no more than the declared length, which is within the limit
        else:  # chunked: read piece by piece, so an endless body is cut at the limit
            parts = []
            size = 0
            async for chunk in self.proto:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                parts.append(chunk)
            body = b"".join(parts)
        if len(body) > limit:
            raise _too_large(limit)
        return body

    async def disconnected(self) -> None:
        await self.proto.client_disconnect()

    async def answer(self, reply: Reply) -> None:
        headers = self.header_list(reply)
        proto = self.proto
        try:
            if reply.stream is None:
                proto.response_bytes(reply.status, headers, reply.body)
                return

            async def start(first: bytes) -> Callable[[bytes], Awaitable[None]]:
                transport = proto.response_stream(reply.status, headers)
                await transport.send_bytes(first)
                return transport.send_bytes  # type: ignore[no-any-return]

            async def end() -> None:
                return None  # the stream ends when this returns

            await _stream(self, reply.stream, start, end)
        except RuntimeError as exc:  # RSGIProtocolClosed / RSGIProtocolError: the client is gone
            raise OSError(str(exc)) from None


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body is larger than the {limit} bytes this gateway accepts.")


@dataclass(slots=True)
class Reply:
    """What a paid endpoint answers: a body, or a stream of chunks forwarded as they come."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] | None = None
    media_type: str = _JSON
    stream: AsyncIterator[bytes] | None = None
    # Bookkeeping to start once the answer was handed to the server (settle, usage event): started earlier it
    # would take the core from the server thread that writes the answer, which is pure latency for the client.
    then: Callable[[], None] | None = None


def error_reply(dialect: str, exc: GatewayError) -> Reply:
    return Reply(exc.status, error_body(dialect, exc.status, exc.code, exc.message, exc.field), headers_for(exc))


Handler = Callable[[Any, Incoming, str], Coroutine[Any, Any, Reply]]


async def _stream(
    incoming: Incoming,
    content: AsyncIterator[bytes],
    start: Callable[[bytes], Awaitable[Callable[[bytes], Awaitable[None]]]],
    end: Callable[[], Awaitable[None]],
) -> None:
    """Forward each chunk as it is produced; stop at once (cancelling the upstream read) when the client leaves.
    The stream's own `finally` records the request however it ended. `start(first)` sends the head and the
    first chunk and returns the sender of the next ones; `end()` closes the answer."""
    me = asyncio.current_task()
    assert me is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await incoming.disconnected()
        gone = True
        me.cancel()

    watcher: asyncio.Future[None] | None = None

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer: asyncio.TimerHandle | None = None
    try:
        # The stream is started before anything is sent: from then on its own `finally` records the request,
        # even if the very first send fails (an async generator that never ran has no `finally` to run).
        first = await anext(content, None)
        if first is not None:
            send = await start(first)
            # Watched only once the stream outlasts WATCH_AFTER_S (any real model's does), as the attempts are:
            # the watcher (a task and a call into the server) costs more than a quick stream's whole relay,
            # and until then a client that left is noticed at the next send.
            timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
            async for chunk in content:
                await send(chunk)
        else:
            await start(b"")
        await end()
    except asyncio.CancelledError:
        if not gone:
            raise
        me.uncancel()
    except OSError:
        pass  # the connection broke under a send: the client is gone as well
    finally:
        if timer is not None:
            timer.cancel()
        if watcher is not None:
            watcher.cancel()
        aclose = getattr(content, "aclose", None)
        if aclose is not None:
            await aclose()


class GatewayApp(Litestar):
    """Litestar for everything, but the paid endpoints first, without it."""

    exact_routes: Mapping[str, tuple[str, Handler]]
    prefix_routes: tuple[tuple[str, str, Handler], ...]

    @staticmethod
    def _get_default_plugins(plugins: list[PluginProtocol]) -> list[PluginProtocol]:
        # Litestar adds its pydantic and attrs plugins whenever those libraries are installed (the test extras
        # bring both): nothing the gateway serves through Litestar takes or returns their types, and importing
        # them cost each worker 7 MB. Litestar is pinned (pyproject.toml); if this private hook is renamed, the
        # footprint test (tests/gateway/test_footprint.py) says so.
        return [*plugins, MsgspecDIPlugin()]

    def route_paid(
        self, exact: Mapping[str, tuple[str, Handler]], prefixes: tuple[tuple[str, str, Handler], ...]
    ) -> None:
        """`exact`: path -> (error dialect, handler); `prefixes`: (path prefix, error dialect, handler)."""
        self.exact_routes = exact
        self.prefix_routes = prefixes

    def _route(self, method: str, path: str) -> tuple[str, Handler] | None:
        route = self.exact_routes.get(path)
        if route is None and method == "POST":
            for prefix, dialect, handler in self.prefix_routes:
                if path.startswith(prefix):
                    return dialect, handler
        return route

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            route = self._route(scope["method"], scope["path"])
            if route is not None:
                await self._serve(route, AsgiIncoming(scope, receive, send))
                return
        await super().__call__(scope, receive, send)

    # --- RSGI (granian's own interface; see shared/rsgi.py) ---

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto == "http":
            route = self._route(scope.method, scope.path)
            if route is not None:
                await self._serve(route, RsgiIncoming(scope, proto))
                return
        await rsgi.serve_asgi(super().__call__, scope, proto)  # type: ignore[arg-type]

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lifespan = rsgi.Lifespan(super().__call__)  # type: ignore[arg-type]
        self._lifespan.startup(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lifespan.shutdown(loop)

    async def _serve(self, route: tuple[str, Handler], incoming: Incoming) -> None:
        dialect, handler = route
        token = request_id_var.set(incoming.request_id)
        try:
            if incoming.method != "POST":
                not_allowed = error_body(dialect, 405, "method_not_allowed", "Method Not Allowed")
                reply = Reply(405, not_allowed, {"allow": "POST"})
            else:
                try:
                    reply = await handler(self.state.gw, incoming, dialect)
                except ClientGone:
                    return
            try:
                await incoming.answer(reply)
            finally:
                if reply.then is not None:
                    reply.then()
        except OSError:
            pass  # the client left while the answer was being sent; the request was recorded already
        finally:
            request_id_var.reset(token)
