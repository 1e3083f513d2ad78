"""`faregate billing rebuild` recomputes the same numbers the live projections hold; `faregate billing verify`
exits 0 on a consistent ledger and non-zero, naming the problem, on a tampered one."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from services.billing import audit, consumer
from services.billing.funding import Funding
from shared.events import ModelPrice, new_id
from shared.runtime import Resources
from tests.billing.conftest import credit, usage

SNAPSHOT = {
    "wallets": "SELECT account_id, balance_micros, seq FROM billing.wallets ORDER BY account_id",
    "plans": "SELECT grant_id, remaining_micros FROM billing.plan_grants ORDER BY grant_id",
    "keys": "SELECT key_id, used_micros FROM billing.key_usage ORDER BY key_id",
}


def faregate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faregate.cli", *args], capture_output=True, text=True,
                          timeout=120)


async def _snapshot(resources: Resources) -> dict[str, list[tuple[Any, ...]]]:
    assert resources.pool
    return {name: [tuple(r) for r in await resources.pool.fetch(sql)] for name, sql in SNAPSHOT.items()}


async def _activity(resources: Resources, funding: Funding) -> str:
    """Credits, usage paid partly by a plan, a refund: every kind of row the projections fold."""
    assert resources.pool
    account = new_id()
    await credit(funding, account, 5_000_000)
    await resources.pool.execute(
        "INSERT INTO billing.plans (plan_id, name, price_micros, credit_micros, validity_days)"
        " VALUES ($1, 'audit plan', 1000000, 1500000, 30)", f"audit-{account}")
    await funding.buy_plan_with_balance(account, f"audit-{account}")
    price = ModelPrice(input=1_000_000, output=2_000_000)
    evs = [usage(account, price=price, prompt_tokens=100_000 * i, completion_tokens=50_000)
           for i in range(1, 15)]
    await consumer.apply_batch(resources.pool, evs, default_threshold=0)
    await funding.refund(evs[-1].event_id, None, "audit refund")
    return account


async def test_rebuild_reproduces_the_live_projections(resources: Resources, funding: Funding) -> None:
    await _activity(resources, funding)
    assert resources.pool
    live = await _snapshot(resources)
    assert await audit.verify(resources.pool) == []
    counts = await audit.rebuild(resources.pool)
    assert counts["wallets"] == len(live["wallets"])
    assert await _snapshot(resources) == live

    result = faregate("billing", "rebuild")
    assert result.returncode == 0, result.stderr
    assert await _snapshot(resources) == live
    result = faregate("billing", "verify")
    assert result.returncode == 0, result.stdout + result.stderr


async def test_verify_catches_a_tampered_projection_and_rebuild_repairs_it(resources: Resources,
                                                                           funding: Funding) -> None:
    assert resources.pool
    account = await _activity(resources, funding)
    await resources.pool.execute("UPDATE billing.wallets SET balance_micros = balance_micros + 1"
                                 " WHERE account_id = $1", account)
    await resources.pool.execute("UPDATE billing.plan_grants SET remaining_micros = remaining_micros + 7"
                                 " WHERE account_id = $1", account)
    result = faregate("billing", "verify")
    assert result.returncode == 1
    assert f"wallet {account}" in result.stdout
    assert "plan " in result.stdout
    assert faregate("billing", "rebuild").returncode == 0
    result = faregate("billing", "verify")
    assert result.returncode == 0, result.stdout


async def test_verify_catches_a_broken_balance_chain(resources: Resources, funding: Funding) -> None:
    assert resources.pool
    account = await _activity(resources, funding)
    await resources.pool.execute("UPDATE billing.ledger SET balance_after = balance_after + 5"
                                 " WHERE account_id = $1 AND seq = 2", account)
    try:
        problems = await audit.verify(resources.pool)
        assert any(account in p and "balance_after" in p for p in problems)
        assert faregate("billing", "verify").returncode == 1
    finally:
        await resources.pool.execute("UPDATE billing.ledger SET balance_after = balance_after - 5"
                                     " WHERE account_id = $1 AND seq = 2", account)
    assert await audit.verify(resources.pool) == []
