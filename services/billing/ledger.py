"""The wallet as a fold over its ledger, and the pure rules billing applies: pricing a usage event, which
plans pay for it, when a wallet counts as low, bonus tiers. No I/O here, so every rule is testable without a
database.

Rounding: `shared.pricing.cost_micros` rounds once, half up, to a whole micro-USD; nothing here rounds again
except the bonus, which is floored (the operator never gives away a fraction it did not mean to).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shared.events import UsageRecorded
from shared.pricing import cost_micros

FINE, LOW, EXHAUSTED = 0, 1, 2


class InvalidUsage(ValueError):
    """A usage event that is well-formed JSON but cannot be charged (negative counts, ...)."""


def price_of(event: UsageRecorded) -> tuple[int, int]:
    """(sell price, operator cost) of one request, from the prices the event itself carries (so a replay
    prices it the same)."""
    if min(event.prompt_tokens, event.completion_tokens, event.cached_tokens) < 0:
        raise InvalidUsage("negative token count")
    if event.group_ratio_ppm < 0 or not 0 <= event.discount_ppm <= 1_000_000:
        raise InvalidUsage("group ratio or discount out of range")
    tokens = {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
              "cached_tokens": event.cached_tokens}
    if event.price is None and event.prompt_tokens + event.completion_tokens > 0:
        # Charging nothing would be a silent loss; refusing keeps it visible (rejected_events, logs).
        raise InvalidUsage("tokens used but no price on the event")
    sell = 0
    if event.price is not None:
        sell = cost_micros(event.price, group_ratio_ppm=event.group_ratio_ppm,
                           discount_ppm=event.discount_ppm,
                           **tokens)
    # The operator's cost is the channel's price to us: no group multiplier, no platform discount.
    cost = cost_micros(event.cost_price, **tokens) if event.cost_price is not None else 0
    if sell < 0 or cost < 0:
        raise InvalidUsage("negative price")
    return sell, cost


@dataclass
class Grant:
    """A plan held by an account, as the debit rule sees it."""

    grant_id: str
    remaining: int
    expires_at: datetime
    models: tuple[str, ...] = ()

    def covers(self, model: str, at: datetime) -> bool:
        return self.remaining > 0 and at < self.expires_at and (not self.models or model in self.models)


def allocate(price: int, grants: Sequence[Grant], model: str,
             at: datetime) -> tuple[list[tuple[str, int]], int]:
    """Split a price between plans valid at `at` and the wallet. Model-restricted plans go first (they are the
    least flexible credit), then the soonest to expire. Mutates the grants' remaining amounts; returns
    [(grant_id, amount)] and the wallet's part."""
    taken: list[tuple[str, int]] = []
    if not grants:
        return taken, price  # most accounts hold no plan
    left = price
    for g in sorted(grants, key=lambda g: (not g.models, g.expires_at, g.grant_id)):
        if left <= 0:
            break
        if g.covers(model, at):
            part = min(left, g.remaining)
            g.remaining -= part
            left -= part
            taken.append((g.grant_id, part))
    return taken, left


def spendable(balance: int, grants: Iterable[Grant], now: datetime) -> int:
    """The one number the gateway reserves against: the wallet plus plans usable for any model.

    Model-restricted plans are left out: the gateway reserves before it knows which plan would pay, so
    counting a plan for model A would let a request for model B overspend. They are still used first at debit
    time, so a restricted plan lowers what a request costs the wallet; it just does not raise what the gateway
    lets through.
    """
    usable = (g.remaining for g in grants if not g.models and g.remaining > 0 and now < g.expires_at)
    return balance + sum(usable)


def low_state(spendable_micros: int, threshold: int) -> int:
    if spendable_micros <= 0:
        return EXHAUSTED
    if spendable_micros < threshold:
        return LOW
    return FINE


def bonus_for(paid: int, tiers: Sequence[tuple[int, int]]) -> int:
    """Bonus micros for a payment: the highest tier (min_micros, percent) whose minimum the payment
    reaches."""
    pct = 0
    for minimum, percent in sorted(tiers):
        if paid >= minimum:
            pct = percent
    return paid * pct // 100


def parse_tiers(specs: Iterable[str]) -> list[tuple[int, int]]:
    """"20=10" -> (20_000_000, 10)."""
    from shared.money import parse_usd

    out = []
    for spec in specs:
        usd, _, pct = spec.partition("=")
        if not pct:
            raise ValueError(f"bonus tier {spec!r} must look like <USD>=<percent>")
        out.append((parse_usd(usd), int(pct)))
    return sorted(out)


@dataclass(frozen=True)
class Row:
    """One ledger row, as `fold` reads it."""

    seq: int
    amount_micros: int
    balance_after: int
    event_id: str


@dataclass
class Folded:
    balance: int = 0
    seq: int = 0
    problems: list[str] = field(default_factory=list)


def fold(rows: Iterable[Row]) -> Folded:
    """Replay one account's ledger in seq order; report gaps and broken balance_after links."""
    state = Folded()
    for row in rows:
        if row.seq != state.seq + 1:
            state.problems.append(f"seq {row.seq} follows {state.seq}")
        state.balance += row.amount_micros
        if row.balance_after != state.balance:
            state.problems.append(
                f"seq {row.seq}: balance_after {row.balance_after} != running {state.balance}")
        state.seq = row.seq
    return state
