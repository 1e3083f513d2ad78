"""An ASGI app served over granian's RSGI interface: the request bridge and the lifespan.

Why: RSGI hands a whole answer to the server in one synchronous call (`response_bytes`) where ASGI takes two
awaited `send`s, and reads a body with one await; on the bench (bench/floor.py) a minimal relay on RSGI adds
~30 µs less per request at concurrency 1 and spends ~15% less CPU per request than the same relay on ASGI. The
gateway serves its paid endpoints on RSGI directly (services/gateway/front.py) and everything else (Litestar:
health, metrics, model listings, internal endpoints) through `serve_asgi` here.

granian calls `__rsgi_init__(loop)` before the worker serves and `__rsgi_del__(loop)` after it stopped, both
with the loop not running: `Lifespan` drives the ASGI lifespan protocol from them, so the app's startup and
shutdown run as they would under an ASGI server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]],
                                                                                    Awaitable[None]]],
                   Awaitable[None]]


def address(text: str) -> tuple[str, int] | None:
    """RSGI's "host:port" (IPv6 hosts bracketed or not) as ASGI's (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def asgi_scope(scope: Any) -> dict[str, Any]:
    """The ASGI HTTP scope of an RSGI request scope."""
    query = scope.query_string
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": scope.path,
        "raw_path": scope.path.encode(),
        "query_string": query.encode("latin-1") if isinstance(query, str) else query,
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
        "client": address(scope.client),
        "server": address(scope.server),
        "state": {},
    }


async def serve_asgi(app: ASGIApp, scope: Any, proto: Any) -> None:
    """One RSGI request through an ASGI app: the body read once, the answer handed over whole or streamed."""
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": await proto(), "more_body": False}
        await proto.client_disconnect()
        return {"type": "http.disconnect"}

    status = 500
    headers: list[tuple[str, str]] = []
    transport: Any = None
    done = False

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers, transport, done
        kind = message["type"]
        if kind == "http.response.start":
            status = message["status"]
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())]
        elif kind == "http.response.body" and not done:
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if transport is None and not more:
                proto.response_bytes(status, headers, body)
                done = True
                return
            if transport is None:
                transport = proto.response_stream(status, headers)
            if body:
                await transport.send_bytes(body)
            done = not more

    await app(asgi_scope(scope), receive, send)
    if not done and transport is None:  # the app sent no body (or nothing at all)
        proto.response_empty(status, headers)


class Lifespan:
    """Runs an ASGI app's lifespan from synchronous hooks: `startup(loop)` returns once the app reported
    startup complete (raising if it failed); `shutdown(loop)` returns once it reported shutdown complete."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[dict[str, Any]] | None = None
        self._started: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        assert self._inbox is not None and self._started is not None and self._stopped is not None
        inbox, started, stopped = self._inbox, self._started, self._stopped

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                started.set_result(None)
            elif kind == "lifespan.startup.failed":
                started.set_exception(RuntimeError(f"startup failed: {message.get('message', '')}"))
            elif kind == "lifespan.shutdown.complete":
                stopped.set_result(None)
            elif kind == "lifespan.shutdown.failed":
                stopped.set_exception(RuntimeError(f"shutdown failed: {message.get('message', '')}"))

        try:
            await self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
        except BaseException as exc:
            for fut in (started, stopped):
                if not fut.done():
                    fut.set_exception(RuntimeError(f"lifespan ended: {exc!r}"))
            raise
        for fut in (started, stopped):
            if not fut.done():
                fut.set_exception(RuntimeError("the app does not support the lifespan protocol"))

    def startup(self, loop: asyncio.AbstractEventLoop) -> None:
        async def start() -> None:
            self._inbox = asyncio.Queue()
            self._started = loop.create_future()
            self._stopped = loop.create_future()
            self._task = loop.create_task(self._run())
            await self._inbox.put({"type": "lifespan.startup"})
            await self._started

        loop.run_until_complete(start())

    def shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._inbox is None or self._stopped is None or self._task is None:
            return

        async def stop() -> None:
            assert self._inbox is not None and self._stopped is not None and self._task is not None
            await self._inbox.put({"type": "lifespan.shutdown"})
            await self._stopped
            await self._task

        loop.run_until_complete(stop())
