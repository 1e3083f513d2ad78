"""`faregate usage <command>`: operator commands of the usage service."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from services.usage import repo, retention
from services.usage.config import UsageSettings
from shared import config, db
from shared.config import CommonSettings


def _retention(args: argparse.Namespace, common: CommonSettings) -> None:
    settings = config.load(UsageSettings)
    days = args.days or settings.retention_days

    async def run() -> retention.Retained:
        pool = await db.create_pool(common.database_url, max_size=2)
        try:
            return await retention.apply(pool, days)
        finally:
            await pool.close()

    done = asyncio.run(run())
    print(f"dropped {len(done.dropped_partitions)} partition(s) older than {days} days: "
          f"{', '.join(done.dropped_partitions) or '-'}; pruned {done.processed_pruned} processed-event ids"
          f" and {done.charges_pruned} orphaned charges")


def _rebuild(args: argparse.Namespace, common: CommonSettings) -> None:
    start = _day(args.since, "--since")
    end = _day(args.until, "--until") if args.until else datetime.now(UTC).replace(
        hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    if start >= end:
        raise SystemExit("faregate usage rebuild-aggregates: --since must be before --until")

    async def run() -> None:
        pool = await db.create_pool(common.database_url, max_size=2)
        try:
            async with pool.acquire() as conn:
                oldest = await conn.fetchval(repo.OLDEST_LOG_MONTH)
                if oldest is None or start < datetime.strptime(oldest, "%Y%m").replace(tzinfo=UTC):
                    raise SystemExit(
                        f"faregate usage rebuild-aggregates: the log is kept from {oldest or '-'} on; "
                        "rebuilding earlier days would erase aggregates the log cannot restore")
                await repo.rebuild_aggregates(conn, start, end)
        finally:
            await pool.close()

    asyncio.run(run())
    print(f"hourly and daily aggregates rebuilt from the request log for {start:%Y-%m-%d} to {end:%Y-%m-%d}")


def _day(text: str, flag: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise SystemExit(f"faregate usage rebuild-aggregates: {flag} must be a date, YYYY-MM-DD") from None


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("retention", help="drop request-log partitions older than the retention age")
    p.add_argument("--days", type=int, default=0, help="override FAREGATE_USAGE_RETENTION_DAYS for this run")
    p.set_defaults(func=_retention)
    r = subparsers.add_parser(
        "rebuild-aggregates",
        help="recompute hourly/daily aggregates from the request log for whole UTC days (refused before the "
             "oldest kept log month: retention dropped those rows, and the aggregates are all that is left)")
    r.add_argument("--since", required=True, help="first UTC day, YYYY-MM-DD")
    r.add_argument("--until", default="", help="UTC day after the last one, YYYY-MM-DD (default: tomorrow)")
    r.set_defaults(func=_rebuild)
