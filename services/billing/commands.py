"""`faregate billing rebuild | verify | hydrate`: operator commands on the ledger and its projections."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.billing import audit, hydrate
from services.billing.guard import BillingGuard
from shared import cache, db
from shared.cache import Keys
from shared.config import CommonSettings


async def _rebuild(common: CommonSettings) -> int:
    pool = await db.create_pool(common.database_url, max_size=2)
    redis = cache.client(common.redis_url)
    try:
        counts = await audit.rebuild(pool)
        published = await hydrate.hydrate_all(pool, BillingGuard(redis, Keys(common.namespace)))
    finally:
        await redis.aclose()
        await pool.close()
    print(f"rebuilt {counts['wallets']} wallets, {counts['plans']} plans, {counts['keys']} key totals; "
          f"published {published} balances to Redis")
    return 0


async def _verify(common: CommonSettings) -> int:
    pool = await db.create_pool(common.database_url, max_size=2)
    try:
        problems = await audit.verify(pool)
    finally:
        await pool.close()
    for p in problems:
        print(p)
    if problems:
        print(f"verify: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("verify: ledger and projections agree")
    return 0


async def _hydrate(common: CommonSettings) -> int:
    pool = await db.create_pool(common.database_url, max_size=2)
    redis = cache.client(common.redis_url)
    try:
        n = await hydrate.hydrate_all(pool, BillingGuard(redis, Keys(common.namespace)))
    finally:
        await redis.aclose()
        await pool.close()
    print(f"published {n} balances to Redis")
    return 0


def rebuild(args: argparse.Namespace, common: CommonSettings) -> None:
    sys.exit(asyncio.run(_rebuild(common)))


def verify(args: argparse.Namespace, common: CommonSettings) -> None:
    sys.exit(asyncio.run(_verify(common)))


def hydrate_cmd(args: argparse.Namespace, common: CommonSettings) -> None:
    sys.exit(asyncio.run(_hydrate(common)))


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    subparsers.add_parser("rebuild", help="recompute every wallet, plan and key projection from the ledger"
                          ).set_defaults(func=rebuild)
    subparsers.add_parser("verify", help="check the ledger invariants; exit 1 on any mismatch").set_defaults(
        func=verify)
    subparsers.add_parser("hydrate", help="publish every wallet's spendable balance to Redis").set_defaults(
        func=hydrate_cmd)
