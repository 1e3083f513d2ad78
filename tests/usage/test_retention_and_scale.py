"""Retention drops whole month partitions and keeps the aggregates; a large log still answers the dashboard
fast."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from bench.usage_bench import generate_rows
from services.usage import ingest, repo, reports, retention
from shared.config import CommonSettings
from shared.runtime import Resources
from tests.usage.conftest import recorded


async def _partitions(res: Resources) -> set[str]:
    assert res.pool
    rows = await res.pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'usage.request_log'::regclass")
    return {r["relname"] for r in rows}


async def test_old_months_are_dropped_whole_and_aggregates_stay(clean_usage: Resources) -> None:
    res = clean_usage
    assert res.pool
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    ancient = recorded(at=datetime(2025, 6, 15, tzinfo=UTC), prompt=5)
    old = recorded(at=datetime(2025, 10, 3, tzinfo=UTC), prompt=7)  # 413 days back, but its month ends later
    recent = recorded(at=datetime(2026, 10, 30, tzinfo=UTC), prompt=11)
    await ingest.apply_batch(res.pool, "usage-log", [ancient, old, recent])
    await res.pool.execute("UPDATE usage.processed_events SET processed_at = $1", now - timedelta(days=45))
    assert {"request_log_p202506", "request_log_p202510", "request_log_p202610"} <= await _partitions(res)

    done = await retention.apply(res.pool, retention_days=400, now=now)

    # The cut-off is 2025-10-16: June 2025 is wholly older and goes; October 2025 is not yet wholly older.
    assert "request_log_p202506" in done.dropped_partitions
    assert "request_log_p202510" not in done.dropped_partitions
    parts = await _partitions(res)
    assert "request_log_p202506" not in parts and {"request_log_p202510", "request_log_p202610"} <= parts
    assert {"request_log_p202611", "request_log_p202612"} <= parts  # this and next month made ahead of time
    left = {r["request_id"] for r in await res.pool.fetch("SELECT request_id FROM usage.request_log")}
    assert left == {old.request_id, recent.request_id}
    # The dashboard's history outlives the log.
    assert await res.pool.fetchval("SELECT sum(prompt_tokens) FROM usage.usage_daily") == 5 + 7 + 11
    assert await res.pool.fetchval("SELECT sum(prompt_tokens) FROM usage.usage_hourly") == 5 + 7 + 11
    assert done.processed_pruned == 3

    # Running it again finds nothing more to do.
    again = await retention.apply(res.pool, retention_days=400, now=now)
    assert again.dropped_partitions == []


async def test_the_dashboard_stays_fast_over_a_large_log(clean_usage: Resources) -> None:
    """A modest version of `python -m bench.usage_bench` (1M rows there; 200k here, to spare a shared CI)."""
    assert clean_usage.pool
    now = datetime.now(UTC)
    await generate_rows(clean_usage.pool, 200_000, now - timedelta(days=60), now, accounts=20)
    assert await clean_usage.pool.fetchval("SELECT count(*) FROM usage.request_log") == 200_000
    tz = ZoneInfo("Europe/Berlin")
    await reports.summary(clean_usage.pool, "acct-3", tz, now)  # warm, as a running service would be

    t0 = time.perf_counter()
    one = await reports.summary(clean_usage.pool, "acct-3", tz, now)
    one_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    every = await reports.summary(clean_usage.pool, None, tz, now)
    all_s = time.perf_counter() - t0

    assert one.month.requests > 0 and every.month.requests >= one.month.requests * 19
    # The aggregates agree with the raw log they were built from.
    since = one.month.since
    raw = await clean_usage.pool.fetchval(
        "SELECT count(*) FROM usage.request_log WHERE account_id = 'acct-3' AND ts >= $1",
        since.replace(minute=0, second=0, microsecond=0))
    assert one.month.requests == raw
    assert one_s < 0.5 and all_s < 1.0, (one_s, all_s)

    # One key (the dashboard's key filter), in one account and across all (an admin's): still the aggregates,
    # read through the key's own index rather than every account's hours.
    t0 = time.perf_counter()
    key = await reports.summary(clean_usage.pool, "acct-3", tz, now, "key-3-1")
    key_s = time.perf_counter() - t0
    raw_key = await clean_usage.pool.fetchval(
        "SELECT count(*) FROM usage.request_log WHERE key_id = 'key-3-1' AND ts >= $1",
        since.replace(minute=0, second=0, microsecond=0))
    assert 0 < key.month.requests == raw_key < one.month.requests
    assert sum(m.requests for m in key.by_model) == raw_key
    assert (await reports.summary(clean_usage.pool, None, tz, now, "key-3-1")).month == key.month
    for sql, args in ((repo.SUMMARY_TOTALS.every_key, (None, since, since, since, "key-3-1")),
                      (repo.SUMMARY_BY_MODEL.every_key, (None, since, "key-3-1"))):
        plan = "\n".join(r[0] for r in await clean_usage.pool.fetch("EXPLAIN " + sql, *args))
        assert "usage_hourly_key_hour" in plan and "Seq Scan" not in plan, plan
    assert key_s < 0.5, key_s


def test_the_operator_commands_run(common: CommonSettings, capsys: pytest.CaptureFixture[str]) -> None:
    """`faregate usage retention` and `faregate usage rebuild-aggregates`, as an operator (or cron) runs
    them."""
    from faregate.cli import main

    main(["usage", "retention", "--days", "400"])
    assert "partition(s) older than 400 days" in capsys.readouterr().out

    async def prepare() -> None:
        pool = await asyncpg.create_pool(common.database_url, min_size=1, max_size=1)
        try:
            await pool.execute("TRUNCATE usage.request_log, usage.usage_hourly, usage.usage_daily,"
                               " usage.processed_events")
            await ingest.apply_batch(pool, "usage-log", [recorded(prompt=9), recorded(prompt=1)])
            await pool.execute("UPDATE usage.usage_daily SET prompt_tokens = 0")  # aggregates gone wrong
        finally:
            await pool.close()

    asyncio.run(prepare())
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    main(["usage", "rebuild-aggregates", "--since", today])
    assert "rebuilt" in capsys.readouterr().out

    async def daily_prompt_tokens() -> int:
        conn = await asyncpg.connect(common.database_url)
        try:
            return int(await conn.fetchval("SELECT sum(prompt_tokens) FROM usage.usage_daily"))
        finally:
            await conn.close()

    assert asyncio.run(daily_prompt_tokens()) == 10
    with pytest.raises(SystemExit, match="erase aggregates"):
        main(["usage", "rebuild-aggregates", "--since", "2001-01-01"])
