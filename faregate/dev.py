"""`faregate dev`: the whole stack in one terminal, with prefixed logs, stopped cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import IO, Any

from faregate import stack
from faregate.cli import SERVICES, migrate_all, settings_class
from shared import config
from shared.config import CommonSettings

COLORS = ["36", "33", "35", "32", "34", "31"]


def _pump(name: str, color: str, stream: IO[bytes]) -> None:
    prefix = f"\033[{color}m{name:>13}\033[0m | " if sys.stdout.isatty() else f"{name:>13} | "
    for raw in iter(stream.readline, b""):
        sys.stdout.write(prefix + raw.decode(errors="replace"))
        sys.stdout.flush()


def _wait_ready(url: str, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception), urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310
            if resp.status == 200:
                return True
        time.sleep(0.2)
    return False


def _port(name: str) -> tuple[str, int]:
    s: Any = config.load(settings_class(SERVICES[name]))
    return s.host, s.port


async def _seed(common: CommonSettings) -> dict[str, str]:
    """Demo account, key, mock-upstream channel and wallet credit; idempotent."""
    keys_seed = importlib.import_module("services.keys.seed")
    billing_seed = importlib.import_module("services.billing.seed")
    host, port = _port("mock-upstream")
    demo = await keys_seed.seed_demo(common, upstream_base_url=f"http://{host}:{port}")
    await billing_seed.seed_demo(common, account_id=demo.account_id, amount_micros=10_000_000)
    return {"api_key": demo.api_key, "email": demo.email, "password": demo.password}


def run_dev(common: CommonSettings, *, seed: bool = True) -> int:
    engines = stack.ensure_all(common.database_url, common.redis_url, common.nats_url, common.data_dir)
    print(f"[dev] engines: {engines}", flush=True)
    for line in asyncio.run(migrate_all(common)):
        print(f"[dev] migrated {line}", flush=True)

    env = {**os.environ, "FAREGATE_LOG_FORMAT": os.environ.get("FAREGATE_LOG_FORMAT", "text")}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    for i, name in enumerate(SERVICES):
        proc = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli", name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(name, COLORS[i % len(COLORS)], proc.stdout), daemon=True).start()
        procs.append((name, proc))

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        for name, _ in procs:
            host, port = _port(name)
            if not _wait_ready(f"http://{host}:{port}/healthz"):
                print(f"[dev] {name} did not become healthy", flush=True)
                raise KeyboardInterrupt
        ghost, gport = _port("gateway")
        base = f"http://{ghost}:{gport}/v1"
        print("\n" + "=" * 78, flush=True)
        print(f"Faregate is up.  Gateway base URL: {base}", flush=True)
        khost, kport = _port("keys")
        print(f"Web console:     http://{khost}:{kport}/", flush=True)
        if seed:
            demo = asyncio.run(_seed(common))
            key = demo["api_key"]
            print(f"Demo API key:    {key}", flush=True)
            print(f"Demo login:      {demo['email']} / {demo['password']}", flush=True)
            print("Try it:", flush=True)
            print(
                f"  curl -s {base}/chat/completions -H 'Authorization: Bearer {key}' "
                "-H 'Content-Type: application/json' "
                '-d \'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}\'',
                flush=True,
            )
        print("Ctrl-C stops everything.", flush=True)
        print("=" * 78 + "\n", flush=True)
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        dead = [n for n, p in procs if p.poll() is not None]
        print(f"[dev] {', '.join(dead)} exited; stopping the rest", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 35
        for _, proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        print("[dev] stopped", flush=True)
