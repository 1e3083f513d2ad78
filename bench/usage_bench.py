"""The usage service at scale: a million request-log rows, then the dashboard, series, log page and CSV timed.

    .venv/bin/python -m bench.usage_bench [--rows 1000000] [--keep]

Runs against the Postgres at FAREGATE_DATABASE_URL in a scratch database of its own (dropped afterwards
unless --keep), so it never touches real data. Rows are made by one INSERT ... SELECT over generate_series:
1M rows take tens of seconds, not the hours a million events would.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

ROOT = Path(__file__).resolve().parent.parent

MODELS = ("gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet", "gemini-1.5-flash", "o3-mini")

# Rows spread evenly over [$1, $2): $3 rows, $4 accounts with $5 keys each, models from $6; every 50th fails.
GENERATE = """
INSERT INTO usage.request_log (ts, request_id, account_id, user_id, key_id, model, upstream_model,
    channel_id, dialect, endpoint, stream, status, error_code, prompt_tokens, completion_tokens,
    cached_tokens,
    cost_micros, upstream_cost_micros, charged_at, latency_ms, ttft_ms)
SELECT t, $7 || i, 'acct-' || (i % $4), 'user-' || (i % $4), 'key-' || (i % $4) || '-' || ((i / $4) % $5),
       m, m, 'ch-' || (i % 3), 'openai', 'chat', i % 2 = 0,
       CASE WHEN i % 50 = 0 THEN 502 ELSE 200 END, CASE WHEN i % 50 = 0 THEN 'upstream_error' ELSE '' END,
       p, c, p / 4, (p * 150000 + c * 600000) / 1000000, (p * 100000 + c * 400000) / 1000000, t,
       200 + i % 3000, 50 + i % 700
FROM (SELECT i, $1::timestamptz + ($2::timestamptz - $1::timestamptz) * (i::float8 / $3) AS t,
             ($6::text[])[1 + i % array_length($6::text[], 1)] AS m,
             (50 + i % 2000)::bigint AS p, (10 + i % 700)::bigint AS c
      FROM generate_series(0, $3 - 1) AS i) AS g
"""


def _months(start: datetime, end: datetime) -> set[date]:
    out, d = set(), date(start.year, start.month, 1)
    while d <= end.date():
        out.add(d)
        d = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return out


async def generate_rows(pool: asyncpg.Pool, rows: int, start: datetime, end: datetime, *, accounts: int = 50,
                        keys_per_account: int = 4, prefix: str = "bench-") -> None:
    """Fill the request log with `rows` rows over [start, end) and rebuild the aggregates from them."""
    from services.usage import repo

    async with pool.acquire() as conn:
        await repo.ensure_partitions(conn, _months(start, end))
        await conn.execute(GENERATE, start, end, rows, accounts, keys_per_account, list(MODELS), prefix)
        day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
        day1 = end.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        await repo.rebuild_aggregates(conn, day0, day1)
        await conn.execute("ANALYZE usage.request_log")
        await conn.execute("ANALYZE usage.usage_hourly")


async def _timed(fn: Callable[[], Awaitable[Any]], repeat: int = 5) -> dict[str, float]:
    await fn()  # warm the plan and the cache, as a live service would be
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return {"median_ms": round(statistics.median(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2)}


async def measure(pool: asyncpg.Pool, now: datetime) -> dict[str, dict[str, float]]:
    from services.usage import reports
    from services.usage.periods import Range

    tz = ZoneInfo("Europe/Berlin")
    month = Range(now - timedelta(days=30), now)
    f = reports.LogFilter("acct-7", month)

    async def csv_10k() -> None:
        n = 0
        async for chunk in reports.export_csv(pool, f, admin=False):
            n += chunk.count(b"\n")
            if n > 10_000:
                break

    return {
        "summary_one_account": await _timed(lambda: reports.summary(pool, "acct-7", tz, now)),
        "summary_all_accounts": await _timed(lambda: reports.summary(pool, None, tz, now)),
        "series_daily_by_model": await _timed(
            lambda: reports.series(pool, "acct-7", month, tz, "day", "model")),
        "series_hourly_all": await _timed(
            lambda: reports.series(pool, None, Range(now - timedelta(days=2), now), tz, "hour", "none")),
        "keys_one_account": await _timed(lambda: reports.keys_usage(pool, "acct-7", month)),
        "log_first_page": await _timed(lambda: reports.log_page(pool, f, limit=50, cursor=None, admin=False)),
        "log_filtered_page": await _timed(lambda: reports.log_page(
            pool, reports.LogFilter("acct-7", month, model="gpt-4o", status_min=400), limit=50, cursor=None,
            admin=False)),
        "csv_first_10k_rows": await _timed(csv_10k, repeat=2),
    }


async def measure_ingest(pool: asyncpg.Pool, events: int = 20_000, batch: int = 500) -> dict[str, float]:
    """The usage-log consumer's write path (one transaction per batch), without NATS: events per second."""
    from services.usage import ingest
    from shared.events import ModelPrice, UsageCharged, UsageRecorded, new_id

    price = ModelPrice(input=150_000, output=600_000)
    now = datetime.now(UTC)
    batches = []
    for b in range(events // batch):
        evs: list[Any] = []
        for i in range(batch // 2):
            rid = new_id()
            rec = UsageRecorded(event_id=rid, request_id=rid, account_id=f"acct-{i % 50}",
                                key_id=f"key-{i % 200}", model=MODELS[i % len(MODELS)], prompt_tokens=100 + i,
                                completion_tokens=20, latency_ms=300, occurred_at=now - timedelta(seconds=b),
                                price=price)
            evs += [rec, UsageCharged(request_id=rid, usage_event_id=rid, account_id=rec.account_id,
                                      key_id=rec.key_id, model=rec.model, amount_micros=27,
                                      balance_micros=1_000)]
        batches.append(evs)
    t0 = time.perf_counter()
    for evs in batches:
        await ingest.apply_batch(pool, "bench-ingest", evs)
    took = time.perf_counter() - t0
    return {"events": float(events), "seconds": round(took, 2), "events_per_s": round(events / took)}


async def main(rows: int, keep: bool) -> None:
    from shared import config, db
    from shared.config import CommonSettings

    common = config.load(CommonSettings)
    name = f"fg_bench_usage_{secrets.token_hex(3)}"
    parts = urllib.parse.urlsplit(common.database_url)
    dsn = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    await db.ensure_database(dsn)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await db.migrate(conn, "usage", ROOT / "services" / "usage" / "migrations")
        finally:
            await conn.close()
        pool = await db.create_pool(dsn, max_size=4)
        try:
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            await generate_rows(pool, rows, now - timedelta(days=90), now)
            load_s = time.perf_counter() - t0
            results = await measure(pool, now)
            count = await pool.fetchval("SELECT count(*) FROM usage.request_log")
            ingest_rate = await measure_ingest(pool)
        finally:
            await pool.close()
        print(msgspec.json.format(msgspec.json.encode(
            {"rows": count, "load_seconds": round(load_s, 1), "queries": results,
             "ingest": ingest_rate})).decode())
    finally:
        if not keep:
            admin = await asyncpg.connect(urllib.parse.urlunsplit(parts._replace(path="/postgres")))
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = ap.parse_args()
    asyncio.run(main(args.rows, args.keep))
