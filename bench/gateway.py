"""Faregate's gateway as a bench target: its own database, namespace and Redis prefix on the local engines, a
key, a catalog and a wallet written through the documented contracts, and `faregate gateway` on the pinned
core(s).

The key snapshot, the catalog and the wallet balance are written straight into Redis exactly as the keys and
billing services publish them (shared/cache.py `Keys`, shared/catalog.py, shared/wallet.py), so the bench
needs only the gateway process: it measures the gateway's hot path, not the admin services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import redis.asyncio as aioredis

from bench import engines, fixtures, nginx
from bench.system import (
    ROOT,
    WORK,
    BenchError,
    Child,
    Cores,
    children_of,
    ensure_debian_tools,
    free_port,
    listeners,
    pin,
    spawn,
    wait_port,
)
from bench.targets import Endpoint, Target
from faregate import stack as stack_tools
from faregate.cli import load_all_configs, migrate_all
from shared import catalog, config
from shared.cache import Keys
from shared.config import CommonSettings
from shared.crypto import hash_api_key, seal
from shared.events import KeySnapshot, ModelPrice
from shared.wallet import SpendGuard

# gpt-4o-mini's list price, micro-USD per million tokens.
PRICE = ModelPrice(input=150_000, output=600_000, cached_input=75_000)
WALLET_MICROS = 10**13  # ten million dollars: no bench run gets near it
MODELS = ("bench-json", "bench-stream", "bench-paced")


@dataclass
class Stack:
    """The engines' slice this bench run uses; dropped at the end."""

    common: CommonSettings
    env: dict[str, str]
    account_id: str
    user_id: str


def open_stack(redis_url: str | None = None, nats_url: str | None = None) -> Stack:
    load_all_configs()
    tag = secrets.token_hex(4)
    base = config.load(CommonSettings)
    data_dir = WORK / "faregate-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "FAREGATE_DATABASE_URL": stack_tools.with_database(base.database_url, f"fg_bench_{tag}"),
        "FAREGATE_NAMESPACE": f"bench{tag}",
        "FAREGATE_DATA_DIR": str(data_dir),
        "FAREGATE_LOG_LEVEL": "WARNING",
        # The bench's key and catalog are in Redis already; nothing should fall through to a keys service.
        "FAREGATE_KEYS_URL": f"http://127.0.0.1:{free_port()}",
        "FAREGATE_BILLING_URL": f"http://127.0.0.1:{free_port()}",
    }
    if redis_url:
        env["FAREGATE_REDIS_URL"] = redis_url
    if nats_url:
        env["FAREGATE_NATS_URL"] = nats_url
    common = config.load(CommonSettings, {**os.environ, **env})
    asyncio.run(migrate_all(common))
    return Stack(common=common, env=env, account_id=f"acct-bench-{tag}", user_id=f"user-bench-{tag}")


def close_stack(stack: Stack) -> None:
    c = stack.common
    asyncio.run(stack_tools.drop_namespace(c.database_url, c.redis_url, c.nats_url, c.namespace))


def bench_catalog(common: CommonSettings, json_port: int, stream_port: int,
                  paced_port: int) -> catalog.Catalog:
    sealed = seal("sk-upstream-bench", common.secret_key)
    channels = tuple(
        catalog.Channel(id=f"ch-{model}", name=model, provider="openai", base_url=f"http://127.0.0.1:{port}/v1",
                        api_keys_enc=(sealed,), models=(model,), model_map={model: fixtures.UPSTREAM_MODEL})
        for model, port in zip(MODELS, (json_port, stream_port, paced_port), strict=True)
    )
    models = tuple(catalog.Model(name=m, provider="openai", price=PRICE, list_price=PRICE, max_output=16_384)
                   for m in MODELS)
    return catalog.Catalog(version=int(time.time()), channels=channels, models=models,
                           groups=(catalog.Group(name="default"),))


def key_snapshot(stack: Stack, secret: str, status: str = "active") -> KeySnapshot:
    return KeySnapshot(key_id=f"key-{hash_api_key(secret)[:16]}", key_hash=hash_api_key(secret),
                       account_id=stack.account_id, user_id=stack.user_id, status=status,
                       # High enough that the limits are checked on every request but never refuse the bench.
                       concurrency_limit=10_000)


def new_secret() -> str:
    return "fg-bench-" + secrets.token_urlsafe(32)


async def _seed(stack: Stack, cat: catalog.Catalog, secret: str) -> None:
    keys = Keys(stack.common.namespace)
    r = aioredis.Redis.from_url(stack.common.redis_url)
    try:
        snap = key_snapshot(stack, secret)
        await r.set(keys.api_key(snap.key_hash), msgspec.json.encode(snap))
        await r.set(keys.catalog(), catalog.encode(cat))
        await SpendGuard(r, keys).set_balance(stack.account_id, WALLET_MICROS)
    finally:
        await r.aclose()


def seed(stack: Stack, json_port: int, stream_port: int, paced_port: int) -> str:
    """Write the catalog, one active key and a funded wallet; returns the key's secret."""
    secret = new_secret()
    asyncio.run(_seed(stack, bench_catalog(stack.common, json_port, stream_port, paced_port), secret))
    return secret


_FOOTPRINT = """
import os
import services.gateway.app
for line in open(f"/proc/{os.getpid()}/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""


def import_footprint_mb() -> float | None:
    """RSS of a fresh interpreter that has only imported the gateway app: what a worker weighs before it
    allocates anything at start-up or per request."""
    proc = subprocess.run([sys.executable, "-c", _FOOTPRINT], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False, timeout=120)
    try:
        return round(float(proc.stdout.strip().splitlines()[-1]), 1)
    except (ValueError, IndexError):
        return None


def gateway_available() -> str | None:
    """None if `faregate gateway` can run here, else why not."""
    if not (ROOT / "services" / "gateway" / "app.py").exists():
        return "services/gateway/app.py does not exist yet (issue 4 not landed)"
    return None


def start(stack: Stack, secret: str, *, workers: int, cpus: tuple[int, ...], name: str,
          label: str, extra_env: dict[str, str] | None = None) -> Target:
    port = free_port()
    extra = dict(extra_env or {})
    # BENCH_CHECKOUT: run the gateway of another checkout (a git worktree of an older commit, say) with this
    # one's virtualenv, so bench/hotpath.py can A/B two versions of the code in one run.
    code = Path(extra.pop("BENCH_CHECKOUT", str(ROOT)))
    env = {**os.environ, **stack.env, **extra, "FAREGATE_GATEWAY_PORT": str(port),
           "FAREGATE_GATEWAY_WORKERS": str(workers), "PYTHONPATH": str(code)}
    child = spawn(f"gateway-{name}", pin(cpus, [sys.executable, "-m", "faregate.cli", "gateway"]), env=env,
                  cwd=code)
    target = Target(
        name=name, label=label,
        json=Endpoint(port, "/v1/chat/completions", "bench-json"),
        stream=Endpoint(port, "/v1/chat/completions", "bench-stream"),
        paced=Endpoint(port, "/v1/chat/completions", "bench-paced"),
        api_key=secret, process=child, worker_pids=lambda: _granian_workers(child, port),
    )
    try:
        _wait_ready(child, port, secret)
    except BaseException:
        child.stop()
        raise
    return target


def _granian_workers(child: Child, port: int) -> list[int]:
    """granian's worker processes: those of its tree that listen on the port (not, say, multiprocessing's
    resource tracker); the root if none do yet."""
    tree = {child.pid, *children_of(child.pid)}
    return [p for p in listeners(port) if p in tree] or [child.pid]


def _wait_ready(child: Child, port: int, secret: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    body = fixtures.request_body("bench-json", stream=False)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(f"gateway exited with {child.proc.returncode}: {child.log_tail()}")
        try:
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body, headers=headers,
                              timeout=5)
            if resp.status_code == 200 and "relays" in resp.text:
                return
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise BenchError(f"gateway not answering a chat request within {timeout:.0f}s ({last}); "
                     f"log: {child.log_tail()}")


@contextlib.contextmanager
def standalone() -> Iterator[tuple[Cores, nginx.Ports, Stack, str]]:
    """What a one-gateway tool needs, as `make bench` sets it up: the nginx and paced upstreams, private Redis
    and NATS, a seeded stack and its key; all stopped and dropped on exit (bench/profile.py, bench/hotpath.py)."""
    ensure_debian_tools()
    cores = Cores.detect()
    up, ports = nginx.start_upstream(cores)
    ports.paced = free_port()
    paced = spawn("paced-upstream", pin(cores.load, [sys.executable, "-m", "bench.paced_upstream",
                                                     str(ports.paced), "20"]))
    eng = engines.start(cores)
    stack = open_stack(eng.redis_url, eng.nats_url)
    try:
        wait_port(ports.paced, 15, paced.proc, "paced upstream")
        yield cores, ports, stack, seed(stack, ports.json, ports.stream, ports.paced)
    finally:
        close_stack(stack)
        eng.stop()
        paced.stop()
        up.stop()
