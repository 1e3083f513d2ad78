"""Billing under load: usage events applied per second, and the lag from gateway response to debit.

    .venv/bin/python -m bench.billing_bench [--quick] [--events N] [--rate R] [--seconds S] [--keep]

Runs a real `faregate billing` process against the Postgres, Redis and NATS named by FAREGATE_* (scratch
database, NATS namespace and Redis prefix of its own, removed afterwards unless --keep), and plays the
gateway:
  1. throughput: N usage.recorded events are published as a backlog, then billing starts and drains it; the
     rate is counted from billing's usage.charged announcements (first to last);
  2. lag: billing running, events are published at R per second for S seconds, each stamped with the
     moment the gateway would have answered the client; lag = when its usage.charged arrives - that moment
     (the debit is committed, Redis updated and the charge announced by then).
Prints one JSON document last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from faregate.cli import load_all_configs, migrate_all  # noqa: E402
from services.billing import wallets  # noqa: E402
from shared import bus, config, db  # noqa: E402
from shared import events as ev  # noqa: E402
from shared.config import CommonSettings  # noqa: E402
from shared.events import ModelPrice, UsageRecorded, new_id  # noqa: E402

PRICE = ModelPrice(input=150_000, output=600_000, cached_input=75_000)
COST = ModelPrice(input=120_000, output=480_000, cached_input=60_000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _event(account: str, i: int) -> UsageRecorded:
    rid = new_id()
    return UsageRecorded(event_id=rid, request_id=rid, account_id=account, key_id=f"key-{account}",
                         model="gpt-4o-mini", channel_id="ch-bench", price=PRICE, cost_price=COST,
                         prompt_tokens=200 + i % 1500, cached_tokens=i % 100, completion_tokens=20 + i % 400)


class Charges:
    """Counts usage.charged announcements and when each arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.decoder = msgspec.json.Decoder(ev.UsageCharged)

    async def on_msg(self, msg: Any) -> None:
        e = self.decoder.decode(msg.data)
        self.arrived.setdefault(e.usage_event_id, time.time())

    async def wait(self, ids: list[str], within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if all(i in self.arrived for i in ids):
                return True
            await asyncio.sleep(0.05)
        return False


def _start_billing(env: dict[str, str], log: Path, batch: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    full = {**os.environ, **env, "FAREGATE_BILLING_PORT": str(port),
            "FAREGATE_BILLING_USAGE_BATCH": str(batch),
            "FAREGATE_LOG_LEVEL": "WARNING"}
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "faregate.cli", "billing"], env=full, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"billing exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.1)
    raise RuntimeError("billing did not start")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_all_configs()
    base = config.load(CommonSettings)
    tag = secrets.token_hex(4)
    parts = urllib.parse.urlsplit(base.database_url)
    dsn = urllib.parse.urlunsplit(parts._replace(path=f"/fg_bench_{tag}"))
    data_dir = tempfile.mkdtemp(prefix=f"faregate-bench-{tag}-")
    env = {"FAREGATE_DATABASE_URL": dsn, "FAREGATE_NAMESPACE": f"bench{tag}", "FAREGATE_DATA_DIR": data_dir}
    common = config.load(CommonSettings, {**os.environ, **env})
    await migrate_all(common)
    log = Path(data_dir) / "billing.log"
    nc = await bus.connect(common.nats_url, name="billing-bench")
    js = nc.jetstream()
    await bus.ensure_streams(js, common.namespace)
    publisher = bus.Publisher(js, common.namespace, Path(data_dir) / "spool")
    publisher.start()
    charges = Charges()
    sub = await nc.subscribe(bus.subject(common.namespace, "usage.charged"), cb=charges.on_msg)
    proc: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"events": args.events, "batch": args.batch}
    try:
        accounts = [new_id() for _ in range(args.accounts)]
        pool = await db.create_pool(dsn, max_size=2)
        async with pool.acquire() as conn:
            for a in accounts:  # funded wallets, as real ones would be
                async with conn.transaction():
                    seed = wallets.Entry(kind="seed", amount=10**12, event_id=new_id())
                    await wallets.post(conn, a, [seed], default_threshold=0)
        await pool.close()

        # 1. Throughput: a backlog, drained by a freshly started billing.
        backlog = [_event(accounts[i % len(accounts)], i) for i in range(args.events)]
        for e in backlog:
            publisher.publish_nowait(e)
        await publisher.flush(wait_s=120)
        proc, _ = _start_billing(env, log, args.batch)
        ids = [e.event_id for e in backlog]
        if not await charges.wait(ids, within_s=args.timeout):
            raise RuntimeError(f"only {sum(i in charges.arrived for i in ids)} of {len(ids)} charged in time")
        times = sorted(charges.arrived[i] for i in ids)
        span = times[-1] - times[0]
        result["applied_events_per_s"] = round((len(times) - 1) / span, 1) if span > 0 else None
        result["drain_seconds"] = round(span, 3)

        # 2. Lag: a paced stream into a running billing.
        paced: dict[str, float] = {}
        interval = 1.0 / args.rate
        start = time.monotonic()
        n = int(args.rate * args.seconds)
        for i in range(n):
            target = start + i * interval
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            e = _event(accounts[i % len(accounts)], i)
            e = msgspec.structs.replace(e, occurred_at=ev.utcnow())
            paced[e.event_id] = e.occurred_at.timestamp()
            publisher.publish_nowait(e)
        achieved = n / (time.monotonic() - start)
        await publisher.flush(wait_s=60)
        if not await charges.wait(list(paced), within_s=args.timeout):
            raise RuntimeError("the paced stream was not fully charged in time")
        lags = [(charges.arrived[i] - t) * 1000 for i, t in paced.items()]
        result.update({"lag_events": n, "paced_per_s": round(achieved, 1),
                       "lag_p50_ms": round(_percentile(lags, 50), 2),
                       "lag_p99_ms": round(_percentile(lags, 99), 2),
                       "lag_max_ms": round(max(lags), 2)})
        return result
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        await sub.unsubscribe()
        await publisher.close()
        if not args.keep:
            for spec in bus.STREAMS:
                with contextlib.suppress(Exception):
                    await js.delete_stream(bus.stream_name(common.namespace, spec))
        await nc.close()
        if not args.keep:
            await _drop(common, f"fg_bench_{tag}")


async def _drop(common: CommonSettings, dbname: str) -> None:
    import asyncpg
    import redis.asyncio as aioredis

    parts = urllib.parse.urlsplit(common.database_url)
    conn = await asyncpg.connect(urllib.parse.urlunsplit(parts._replace(path="/postgres")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        await conn.close()
    r = aioredis.Redis.from_url(common.redis_url)
    try:
        async for key in r.scan_iter(f"{common.namespace}:*", count=1000):
            await r.delete(key)
    finally:
        await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k events, 5 s of paced stream")
    ap.add_argument("--events", type=int, default=None, help="backlog size (default 100000; quick 20000)")
    ap.add_argument("--rate", type=float, default=None,
                    help="paced events per second (default 2000; quick 1000)")
    ap.add_argument("--seconds", type=float, default=None, help="paced stream length (default 15; quick 5)")
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--batch", type=int, default=500, help="FAREGATE_BILLING_USAGE_BATCH for the run")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the scratch database, streams and Redis keys")
    args = ap.parse_args()
    args.events = args.events or (20_000 if args.quick else 100_000)
    args.rate = args.rate or (1_000 if args.quick else 2_000)
    args.seconds = args.seconds or (5 if args.quick else 15)
    print(msgspec.json.encode(asyncio.run(run(args))).decode())


if __name__ == "__main__":
    main()
