"""Projections against the ledger: `rebuild` recomputes every projection from the append-only facts (ledger
rows, plan grants and their debits); `verify` checks the invariants and reports each mismatch.

Invariants: each wallet's balance and seq = the fold of its ledger; each row's balance_after = the running sum
and seqs have no gaps; no event id appears twice; each usage row's wallet part = price - plan part and its
plan part = what plan_debits record; each plan's remaining = credit - its debits, never negative; each key's
used = the sum of its usage prices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

from services.billing import ledger, repo


async def rebuild(pool: asyncpg.Pool) -> dict[str, int]:
    """Recompute all projections in one transaction; writers wait on the table locks meanwhile."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(repo.LOCK_PROJECTIONS)
        await conn.execute(repo.REBUILD_MISSING_WALLETS)
        wallets = await conn.execute(repo.REBUILD_WALLETS)
        grants = await conn.execute(repo.REBUILD_GRANTS)
        await conn.execute(repo.REBUILD_KEY_USAGE_CLEAR)
        keys = await conn.execute(repo.REBUILD_KEY_USAGE)
    return {"wallets": _count(wallets), "plans": _count(grants), "keys": _count(keys)}


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


def _compare(what: str, folded: Iterable[Any], projected: Iterable[Any], key: str,
             fields: tuple[str, ...]) -> list[str]:
    want = {r[key]: tuple(r[f] for f in fields) for r in folded}
    have = {r[key]: tuple(r[f] for f in fields) for r in projected}
    problems = []
    for k in sorted(set(want) | set(have)):
        zero = tuple(0 for _ in fields)
        w, h = want.get(k, zero), have.get(k, zero)
        if w != h:
            problems.append(f"{what} {k}: projection {dict(zip(fields, h, strict=True))} "
                            f"!= ledger {dict(zip(fields, w, strict=True))}")
    return problems


async def verify(pool: asyncpg.Pool) -> list[str]:
    problems: list[str] = []
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # Per-account chains, streamed so a large ledger is not held in memory at once.
        current: str | None = None
        rows: list[ledger.Row] = []
        async for r in conn.cursor(repo.LEDGER_ALL, prefetch=5_000):
            if r["account_id"] != current:
                if current is not None:
                    problems += [f"account {current}: {p}" for p in ledger.fold(rows).problems]
                current, rows = r["account_id"], []
            rows.append(ledger.Row(r["seq"], r["amount_micros"], r["balance_after"], r["event_id"]))
        if current is not None:
            problems += [f"account {current}: {p}" for p in ledger.fold(rows).problems]
        for r in await conn.fetch(repo.DUPLICATE_EVENT_IDS):
            problems.append(f"event {r['event_id']} appears {r['count']} times in the ledger")
        for r in await conn.fetch(repo.USAGE_SPLIT_MISMATCHES):
            problems.append(f"usage {r['event_id']}: wallet part + plan part do not add up to the price")
        problems += _compare("wallet", await conn.fetch(repo.FOLDED_WALLETS),
                             await conn.fetch(repo.PROJECTED_WALLETS),
                             "account_id", ("balance", "seq"))
        problems += _compare("plan", await conn.fetch(repo.FOLDED_GRANTS),
                             await conn.fetch(repo.PROJECTED_GRANTS),
                             "grant_id", ("remaining",))
        negative = await conn.fetch("SELECT grant_id FROM billing.plan_grants WHERE remaining_micros < 0")
        problems += [f"plan {r['grant_id']}: negative remaining" for r in negative]
        problems += _compare("key", await conn.fetch(repo.FOLDED_KEY_USAGE),
                             await conn.fetch(repo.PROJECTED_KEY_USAGE), "key_id", ("used",))
    return problems
