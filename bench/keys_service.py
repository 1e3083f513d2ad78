"""The keys service as a person drives it, for the revocation measurement: `faregate keys` (on all cores),
an admin logged in through its API who puts the bench's models and channels into the catalog and makes a key,
then disables and re-enables that key with the same calls the web console makes.

Started only after the load scenarios (its usage consumer would otherwise take load-core CPU), and on a purged
USAGE stream, so it has no backlog to chew on while the revocation is timed."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import nats

from bench import fixtures
from bench.gateway import MODELS, PRICE, Stack
from bench.system import ROOT, BenchError, Child, Cores, free_port, pin, spawn, wait_port
from shared import bus

ADMIN_EMAIL = "bench-admin@faregate.example"
# A throwaway admin in the run's own scratch database, with a password made up for this run.
ADMIN_PASSWORD = secrets.token_urlsafe(18)


@dataclass
class KeysApi:
    child: Child
    client: httpx.Client
    account_id: str

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.client.request(method, path, json=body)
        if resp.status_code >= 300:
            raise BenchError(f"keys {method} {path}: HTTP {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    def create_key(self, label: str) -> tuple[str, str]:
        """A new key on the admin's account: (key id, secret)."""
        out = self._call("POST", "/api/keys", {"label": label, "concurrency_limit": 10_000})
        return out["key"]["id"], out["secret"]

    def disable(self, key_id: str) -> None:
        self._call("POST", f"/api/keys/{key_id}/disable")

    def enable(self, key_id: str) -> None:
        self._call("POST", f"/api/keys/{key_id}/enable")


async def _purge_usage(stack: Stack) -> None:
    nc = await nats.connect(stack.common.nats_url)
    try:
        js = nc.jetstream()
        spec = next(s for s in bus.STREAMS if s.name == "USAGE")
        with contextlib.suppress(Exception):
            await js.purge_stream(bus.stream_name(stack.common.namespace, spec))
    finally:
        await nc.close()


def _catalog(api: KeysApi, ports: tuple[int, int, int]) -> None:
    api._call("PUT", "/api/admin/groups", {"name": "default"})
    price = {"input": PRICE.input, "output": PRICE.output, "cached_input": PRICE.cached_input}
    for model, port in zip(MODELS, ports, strict=True):
        api._call("PUT", "/api/admin/models", {"name": model, "provider": "openai", "price": price,
                                               "list_price": price, "max_output": 16_384})
        api._call("POST", "/api/admin/channels", {
            "id": f"ch-{model}", "name": model, "provider": "openai",
            "base_url": f"http://127.0.0.1:{port}/v1", "api_keys": ["sk-upstream-bench"], "models": [model],
            "model_map": {model: fixtures.UPSTREAM_MODEL},
        })


@contextlib.contextmanager
def running(stack: Stack, cores: Cores, ports: tuple[int, int, int]) -> Iterator[KeysApi]:
    """`faregate keys` with the bench's catalog in it and an admin logged in."""
    import asyncio

    asyncio.run(_purge_usage(stack))
    port = free_port()
    env = {**os.environ, **stack.env, "FAREGATE_KEYS_PORT": str(port), "PYTHONPATH": str(ROOT),
           "FAREGATE_KEYS_ADMIN_EMAIL": ADMIN_EMAIL, "FAREGATE_KEYS_ADMIN_PASSWORD": ADMIN_PASSWORD}
    env.pop("FAREGATE_KEYS_URL", None)
    # Not pinned to the crowded load core: in production it is a separate service on its own hardware.
    child = spawn("keys", pin(cores.all, [sys.executable, "-m", "faregate.cli", "keys"]), env=env, cwd=ROOT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_port(port, 60, child.proc, "keys service")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/healthz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"keys service not healthy: {child.log_tail()}")
            time.sleep(0.2)
        resp = client.post("/api/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        if resp.status_code != 200:
            raise BenchError(f"admin login: HTTP {resp.status_code} {resp.text[:300]}")
        session = resp.json()
        client.headers["X-CSRF-Token"] = session["csrf_token"]
        api = KeysApi(child=child, client=client, account_id=session["account"]["id"])
        _catalog(api, ports)
        yield api
    finally:
        client.close()
        child.stop()
