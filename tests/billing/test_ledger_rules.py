"""The pure rules, without a database: which plan pays, the spendable number, bonus tiers, the ledger fold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.billing import ledger, wallets

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_restricted_plans_pay_first_then_the_soonest_to_expire_then_the_wallet() -> None:
    grants = [ledger.Grant("late", 500, NOW + timedelta(days=9)),
              ledger.Grant("soon", 300, NOW + timedelta(days=1)),
              ledger.Grant("mini-only", 200, NOW + timedelta(days=30), ("gpt-4o-mini",)),
              ledger.Grant("expired", 999, NOW - timedelta(seconds=1))]
    taken, wallet = ledger.allocate(1_200, grants, "gpt-4o-mini", NOW)
    assert taken == [("mini-only", 200), ("soon", 300), ("late", 500)] and wallet == 200
    taken, wallet = ledger.allocate(50, grants, "other", NOW)
    assert taken == [] and wallet == 50  # everything usable for "other" is spent; expired is never touched
    assert grants[3].remaining == 999


def test_no_plan_leaves_the_whole_price_to_the_wallet() -> None:
    assert ledger.allocate(1_200, [], "gpt-4o-mini", NOW) == ([], 1_200)


def test_derived_ids_are_the_uuid5_every_earlier_release_made() -> None:
    # Event ids already in ledgers, streams and consumers' processed_events: a retry must derive the same one.
    for parts in [("a" * 32, "charged"), ("payment", "pay_1"), ("code", "ünï"), ("demo-seed",)]:
        assert wallets.derived_id(*parts) == uuid.uuid5(wallets._IDS, ":".join(parts)).hex


def test_spendable_counts_only_valid_unrestricted_plans() -> None:
    grants = [ledger.Grant("any", 500, NOW + timedelta(days=1)),
              ledger.Grant("mini-only", 200, NOW + timedelta(days=1), ("gpt-4o-mini",)),
              ledger.Grant("expired", 999, NOW)]
    assert ledger.spendable(1_000, grants, NOW) == 1_500


def test_bonus_tiers_pick_the_highest_reached_and_floor() -> None:
    tiers = ledger.parse_tiers(["20=10", "50=15", "100=20"])
    assert tiers == [(20_000_000, 10), (50_000_000, 15), (100_000_000, 20)]
    assert [ledger.bonus_for(p, tiers) for p in (19_999_999, 20_000_000, 49_990_000, 100_000_000)] == [
        0, 2_000_000, 4_999_000, 20_000_000]
    assert ledger.bonus_for(20_000_003, tiers) == 2_000_000  # 2_000_000.3 floored


def test_low_state_and_the_fold() -> None:
    assert [ledger.low_state(b, 1_000) for b in (1_000, 999, 0, -5)] == [0, 1, 2, 2]
    rows = [ledger.Row(1, 100, 100, "a"), ledger.Row(2, -30, 70, "b"), ledger.Row(4, 5, 80, "c")]
    folded = ledger.fold(rows)
    assert folded.balance == 75 and folded.seq == 4
    assert folded.problems == ["seq 4 follows 2", "seq 4: balance_after 80 != running 75"]
