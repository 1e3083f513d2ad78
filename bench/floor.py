"""The floor of a Python relay: the least any gateway written in Python on granian can do per request.

Two apps, one per granian interface, that read the client's body, POST it to the upstream with the gateway's own
upstream client (services/gateway/upstream_http.py) and hand back the answer: no auth, no limits, no Redis, no
usage event. Measured beside the gateway in one run (`python -m bench.hotpath --floor`), they say how much of
what the gateway adds over a direct call is the server, the event loop and one upstream round trip, and how much
is Faregate's own work. `FLOOR_UPSTREAM` is the upstream origin (http://127.0.0.1:PORT).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench.system import ROOT, Child, free_port, pin, spawn, wait_port
from bench.targets import Endpoint, Target
from services.gateway.upstream_http import Client

_PATH = "/v1/chat/completions"
_client: Client | None = None


def _upstream() -> tuple[Client, str]:
    global _client
    if _client is None:
        _client = Client()
    return _client, os.environ["FLOOR_UPSTREAM"] + _PATH


async def _relay(body: bytes) -> tuple[int, bytes, str]:
    client, url = _upstream()
    resp = await client.post(url, {"content-type": "application/json"}, body)
    data = await resp.aread()
    return resp.status_code, data, resp.headers.get("content-type", "application/json")


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
    status, data, media = await _relay(b"".join(parts))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media.encode()), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def rsgi(scope: Any, protocol: Any) -> None:
    body = await protocol()
    status, data, media = await _relay(body)
    protocol.response_bytes(status, [("content-type", media)], data)


def start(interface: str, upstream_port: int, cpus: tuple[int, ...]) -> Target:
    """One granian worker serving the floor app of `interface` ("asgi" or "rsgi"), pinned to `cpus`."""
    port = free_port()
    env = {**os.environ, "FLOOR_UPSTREAM": f"http://127.0.0.1:{upstream_port}", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "granian", "--interface", interface, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--no-ws", f"bench.floor:{interface}"]
    child: Child = spawn(f"floor-{interface}", pin(cpus, argv), env=env, cwd=ROOT)
    wait_port(port, 30, child.proc, f"floor relay ({interface})")
    endpoint = Endpoint(port, _PATH, "floor")
    return Target(name=f"floor-{interface}", label=f"Python relay floor ({interface})", json=endpoint,
                  stream=endpoint, paced=endpoint, process=child)
