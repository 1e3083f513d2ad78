"""Pure folds from events to what the usage service stores: log rows and aggregate deltas. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from shared.events import UsageRecorded


@dataclass(frozen=True)
class Charge:
    """What usage.charged says about one request."""

    request_id: str
    amount_micros: int
    upstream_cost_micros: int
    charged_at: datetime


@dataclass(frozen=True)
class LogRow:
    ts: datetime
    request_id: str
    account_id: str
    user_id: str
    key_id: str
    model: str
    upstream_model: str
    channel_id: str
    dialect: str
    endpoint: str
    stream: bool
    status: int
    error_code: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_micros: int
    upstream_cost_micros: int
    charged_at: datetime | None
    latency_ms: int
    ttft_ms: int


# Out-of-range values are clamped rather than refused: one odd event must not fail (and so redeliver) the
# whole batch it arrived in. Bigint columns hold up to 2^63; int columns (status, latencies) up to 2^31.
_BIG = 2**62
_INT = 2**31 - 1
_TEXT = 200


def _n(value: int, top: int = _BIG) -> int:
    return min(max(value, 0), top)


def _s(value: str) -> str:
    return value[:_TEXT]


def utc(ts: datetime) -> datetime:
    """Events carry UTC; a naive timestamp is taken as UTC rather than as the server's local time."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def charge_of(request_id: str, amount_micros: int, upstream_cost_micros: int, charged_at: datetime) -> Charge:
    return Charge(_s(request_id), _n(amount_micros), _n(upstream_cost_micros), utc(charged_at))


def log_row(e: UsageRecorded, charge: Charge | None = None) -> LogRow:
    """The log row for one request; metadata only (the event carries no content to copy)."""
    return LogRow(
        ts=utc(e.occurred_at),
        request_id=_s(e.request_id),
        account_id=_s(e.account_id),
        user_id=_s(e.user_id),
        key_id=_s(e.key_id),
        model=_s(e.model),
        upstream_model=_s(e.upstream_model),
        channel_id=_s(e.channel_id),
        dialect=_s(e.dialect),
        endpoint=_s(e.endpoint),
        stream=e.stream,
        status=_n(e.status, 999),
        error_code=_s(e.error_code),
        prompt_tokens=_n(e.prompt_tokens),
        completion_tokens=_n(e.completion_tokens),
        cached_tokens=_n(e.cached_tokens),
        cost_micros=charge.amount_micros if charge else 0,
        upstream_cost_micros=charge.upstream_cost_micros if charge else 0,
        charged_at=charge.charged_at if charge else None,
        latency_ms=_n(e.latency_ms, _INT),
        ttft_ms=_n(e.ttft_ms, _INT),
    )


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_micros: int = 0
    latency_ms_sum: int = 0


# (account_id, bucket start, key_id, model); the bucket is a UTC hour (datetime) or a UTC day (date).
HourKey = tuple[str, datetime, str, str]
DayKey = tuple[str, date, str, str]


@dataclass
class Deltas:
    """What one batch adds to the hourly and daily aggregates."""

    hourly: dict[HourKey, Totals] = field(default_factory=dict)
    daily: dict[DayKey, Totals] = field(default_factory=dict)

    def _both(self, account_id: str, ts: datetime, key_id: str, model: str) -> tuple[Totals, Totals]:
        ts = ts.astimezone(UTC)
        hour = ts.replace(minute=0, second=0, microsecond=0)
        h = self.hourly.setdefault((account_id, hour, key_id, model), Totals())
        d = self.daily.setdefault((account_id, hour.date(), key_id, model), Totals())
        return h, d

    def add_request(self, row: LogRow) -> None:
        for t in self._both(row.account_id, row.ts, row.key_id, row.model):
            t.requests += 1
            t.errors += 1 if row.status >= 400 else 0
            t.prompt_tokens += row.prompt_tokens
            t.completion_tokens += row.completion_tokens
            t.cached_tokens += row.cached_tokens
            t.cost_micros += row.cost_micros
            t.latency_ms_sum += row.latency_ms

    def add_cost(self, account_id: str, ts: datetime, key_id: str, model: str, amount_micros: int) -> None:
        for t in self._both(account_id, ts, key_id, model):
            t.cost_micros += amount_micros


def fold_requests(rows: Iterable[LogRow]) -> Deltas:
    deltas = Deltas()
    for row in rows:
        deltas.add_request(row)
    return deltas
