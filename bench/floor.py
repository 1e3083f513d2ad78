"""The floor of a Python relay: the least any gateway written in Python on granian can do per request.

Two apps, one per granian interface, that read the client's body, POST it to the upstream with the gateway's own
upstream client (services/gateway/upstream_http.py) and hand back the answer: no auth, no limits, no Redis, no
usage event; a stream is forwarded chunk by chunk as it arrives. Measured beside the gateway in one run (`make
bench`, `python -m bench.hotpath --floor`), they say how much of what the gateway adds over a direct call is the
server, the event loop and one upstream round trip, and how much is Faregate's own work. `FLOOR_UPSTREAMS`: the
json, stream and paced upstreams' ports, comma-separated.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench.system import ROOT, Child, free_port, pin, spawn, wait_port
from bench.targets import Endpoint, Target
from services.gateway.upstream_http import Client, Response

_PATH = "/v1/chat/completions"
_client: Client | None = None
_upstreams: dict[str, str] = {}


def _upstream(path: str) -> tuple[Client, str]:
    """The upstream for a request path `/<json|stream|paced>/v1/chat/completions`."""
    global _client
    if _client is None:
        _client = Client()
        for name, port in zip(("json", "stream", "paced"), os.environ["FLOOR_UPSTREAMS"].split(","), strict=True):
            _upstreams[f"/{name}{_PATH}"] = f"http://127.0.0.1:{port}{_PATH}"
    return _client, _upstreams[path]


async def _open(path: str, body: bytes) -> tuple[Response, str]:
    client, url = _upstream(path)
    resp = await client.post(url, {"content-type": "application/json"}, body)
    return resp, resp.headers.get("content-type", "application/json")


async def asgi(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
               send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    resp, media = await _open(scope["path"], b"".join(parts))
    if media.startswith("text/event-stream"):
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": [(b"content-type", media.encode())]})
        async for chunk in resp.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    data = await resp.aread()
    await send({"type": "http.response.start", "status": resp.status_code,
                "headers": [(b"content-type", media.encode()), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def rsgi(scope: Any, protocol: Any) -> None:
    resp, media = await _open(scope.path, await protocol())
    if media.startswith("text/event-stream"):
        transport = protocol.response_stream(resp.status_code, [("content-type", media)])
        async for chunk in resp.aiter_raw():
            await transport.send_bytes(chunk)
        return
    protocol.response_bytes(resp.status_code, [("content-type", media)], await resp.aread())


def start(interface: str, upstream_ports: tuple[int, int, int], cpus: tuple[int, ...]) -> Target:
    """One granian worker serving the floor app of `interface` ("asgi" or "rsgi"), pinned to `cpus`;
    `upstream_ports`: the json, stream and paced upstreams."""
    port = free_port()
    env = {**os.environ, "FLOOR_UPSTREAMS": ",".join(map(str, upstream_ports)), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "granian", "--interface", interface, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--no-ws", f"bench.floor:{interface}"]
    child: Child = spawn(f"floor-{interface}", pin(cpus, argv), env=env, cwd=ROOT)
    wait_port(port, 30, child.proc, f"floor relay ({interface})")
    return Target(name=f"floor-{interface}", label=f"Python relay floor ({interface.upper()} on granian)",
                  json=Endpoint(port, "/json" + _PATH, "floor"), stream=Endpoint(port, "/stream" + _PATH, "floor"),
                  paced=Endpoint(port, "/paced" + _PATH, "floor"), process=child)
