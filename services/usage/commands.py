"""`faregate usage <command>`: operator commands of the usage service."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from services.usage import retention
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


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("retention", help="drop request-log partitions older than the retention age")
    p.add_argument("--days", type=int, default=0, help="override FAREGATE_USAGE_RETENTION_DAYS for this run")
    p.set_defaults(func=_retention)
