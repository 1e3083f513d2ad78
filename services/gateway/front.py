"""The gateway's ASGI entry: the paid client endpoints are served straight off the ASGI messages; everything else
(ops, model listings, internal endpoints, unknown paths) goes through Litestar.

Why not Litestar for these too: on the bench (bench/hotpath.py, one core) Litestar's routing, request and
response objects, its exception and our request-id middleware cost ~80 µs of the ~400 µs of CPU a relayed
request took, for endpoints that need none of it: one POST body in, one body or stream out. Here a request is a
dict lookup, the headers decoded once, the body read with its size limit, and one or two `send` calls.

`GatewayApp` is still a Litestar app (lifespan, state, TestClient, every other route), with `__call__` taking the
paid paths first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from litestar import Litestar

from services.gateway.errors import BodyTooLarge, GatewayError, error_body, headers_for
from shared.events import new_id
from shared.logs import request_id_var
from shared.web import well_formed_request_id

log = logging.getLogger("faregate.gateway")

# The raw ASGI callables and messages (plain dicts here; Litestar's TypedDicts fit its own handlers, not this).
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = b"application/json"

# A stream's client is watched for leaving once the stream has run this long (see _send_stream).
WATCH_AFTER_S = 0.02


class ClientGone(Exception):
    """The client hung up; nothing more can be sent."""


class Incoming:
    """One client request: lower-cased headers (decoded once), the query on demand, the peer and the request id.

    The request id is always minted here, never taken from the client: it names the request's usage event and
    reservation, which billing and admission count once, so a client repeating an X-Request-Id of its own would
    otherwise be charged for the first request only. A well-formed client id is kept as `client_request_id`,
    echoed as X-Client-Request-Id (as OpenAI's API does)."""

    __slots__ = ("_query", "client_request_id", "headers", "peer", "receive", "request_id", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            # A repeated header is one comma-separated list (RFC 9110 5.3); X-Forwarded-For relies on that.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        client = scope.get("client")
        self.peer: str = client[0] if client else ""
        self.request_id = new_id()
        theirs = headers.get("x-client-request-id") or headers.get("x-request-id")
        self.client_request_id = theirs if theirs and well_formed_request_id(theirs) == theirs else ""
        self._query: dict[str, str] | None = None

    @property
    def query_params(self) -> dict[str, str]:
        if self._query is None:
            raw = self.scope.get("query_string", b"")
            self._query = dict(parse_qsl(raw.decode("latin-1"))) if raw else {}
        return self._query

    async def body(self, limit: int) -> bytes:
        """The whole body, refused with 413 past `limit` bytes (from Content-Length before reading, if sent)."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
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


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body is larger than the {limit} bytes this gateway accepts.")


@dataclass(slots=True)
class Reply:
    """What a paid endpoint answers: a body, or a stream of chunks forwarded as they come."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] | None = None
    media_type: bytes = _JSON
    stream: AsyncIterator[bytes] | None = None
    # Bookkeeping to start once the answer was handed to the server (settle, usage event): started earlier it
    # would take the core from the server thread that writes the answer, which is pure latency for the client.
    then: Callable[[], None] | None = None


def error_reply(dialect: str, exc: GatewayError) -> Reply:
    return Reply(exc.status, error_body(dialect, exc.status, exc.code, exc.message, exc.field), headers_for(exc))


Handler = Callable[[Any, Incoming, str], Coroutine[Any, Any, Reply]]


async def send_reply(reply: Reply, incoming: Incoming, send: Send, receive: Receive) -> None:
    headers = [(b"content-type", reply.media_type), (b"x-request-id", incoming.request_id.encode())]
    if incoming.client_request_id:
        headers.append((b"x-client-request-id", incoming.client_request_id.encode()))
    if reply.headers:
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    if reply.stream is None:
        headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
        return
    await _send_stream(reply.status, headers, reply.stream, send, receive)


async def _send_stream(
    status: int, headers: list[tuple[bytes, bytes]], content: AsyncIterator[bytes], send: Send, receive: Receive
) -> None:
    """Forward each chunk as it is produced; stop at once (cancelling the upstream read) when the client leaves.
    The stream's own `finally` records the request however it ended."""
    me = asyncio.current_task()
    assert me is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
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
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if first is not None:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            # Watched only once the stream outlasts WATCH_AFTER_S (any real model's does), as the attempts are:
            # the watcher (a task and a call into the server) costs more than a quick stream's whole relay,
            # and until then a client that left is noticed at the next send.
            timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
            async for chunk in content:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
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

    def route_paid(
        self, exact: Mapping[str, tuple[str, Handler]], prefixes: tuple[tuple[str, str, Handler], ...]
    ) -> None:
        """`exact`: path -> (error dialect, handler); `prefixes`: (path prefix, error dialect, handler)."""
        self.exact_routes = exact
        self.prefix_routes = prefixes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            route = self.exact_routes.get(path)
            if route is None and scope["method"] == "POST":
                for prefix, dialect, handler in self.prefix_routes:
                    if path.startswith(prefix):
                        route = (dialect, handler)
                        break
            if route is not None:
                await self._serve(route, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve(self, route: tuple[str, Handler], scope: Scope, receive: Receive, send: Send) -> None:
        dialect, handler = route
        incoming = Incoming(scope, receive)
        token = request_id_var.set(incoming.request_id)
        try:
            if scope["method"] != "POST":
                not_allowed = error_body(dialect, 405, "method_not_allowed", "Method Not Allowed")
                reply = Reply(405, not_allowed, {"allow": "POST"})
            else:
                try:
                    reply = await handler(self.state.gw, incoming, dialect)
                except ClientGone:
                    return
            try:
                await send_reply(reply, incoming, send, receive)
            finally:
                if reply.then is not None:
                    reply.then()
        except OSError:
            pass  # the client left while the answer was being sent; the request was recorded already
        finally:
            request_id_var.reset(token)
