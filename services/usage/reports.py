"""What the usage API answers: dashboard summary, time series, per-key usage, the log page and the CSV export.

Dashboard, series and per-key numbers come from the hourly aggregates (so they survive log retention and stay
fast at any log size); the log and the export read the request log itself.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from services.usage import repo
from services.usage.periods import Range, period_starts
from shared.money import usd
from shared.web import ServiceError

# --- API schemas (separate from events and tables) ------------------------------------------------------


class PeriodTotals(msgspec.Struct, kw_only=True):
    since: datetime
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


class ModelTotals(msgspec.Struct, kw_only=True):
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


class Summary(msgspec.Struct, kw_only=True):
    account_id: str | None  # None: every account (admins)
    key_id: str | None = None  # totals and models of this API key only (the balance stays the account's)
    tz: str
    balance_micros: int | None  # last balance billing reported; None if unknown
    balance_as_of: datetime | None  # when billing reported it (events only)
    balance_source: str  # events (the newest billing event) | billing (asked just now) | unknown
    today: PeriodTotals
    week: PeriodTotals
    month: PeriodTotals
    by_model: list[ModelTotals]  # this month, most expensive first


class SeriesPoint(msgspec.Struct, kw_only=True):
    bucket: datetime  # start of the bucket, in the requested zone
    group: str  # the model or key id (group_by), "" when not grouped
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_micros: int


class Series(msgspec.Struct, kw_only=True):
    account_id: str | None
    key_id: str | None = None  # this API key's points only
    granularity: str
    group_by: str
    tz: str
    start: datetime
    end: datetime
    points: list[SeriesPoint]  # buckets without traffic are left out


class KeyUsage(msgspec.Struct, kw_only=True):
    account_id: str
    key_id: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    last_used_hour: datetime


class LogItem(msgspec.Struct, kw_only=True):
    time: datetime
    request_id: str
    account_id: str
    user_id: str
    key_id: str
    model: str
    channel_id: str  # operators' routing detail: admins only ("" for users)
    dialect: str
    endpoint: str
    stream: bool
    status: int
    error_code: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_micros: int
    charged: bool  # false until billing has debited the request
    latency_ms: int
    ttft_ms: int
    upstream_cost_micros: int | None = None  # admins only


class LogPage(msgspec.Struct, kw_only=True):
    items: list[LogItem]
    next_cursor: str | None  # pass as `cursor` for the next (older) page; None at the end


# --- reads ----------------------------------------------------------------------------------------------


def _key_arg(key_id: str) -> tuple[str, ...]:
    return (key_id,) if key_id else ()


async def summary(pool: asyncpg.Pool, account: str | None, tz: ZoneInfo, now: datetime,
                  key_id: str = "") -> Summary:
    """`key_id` narrows the totals and the models to one API key (of `account`: another's matches nothing)."""
    p = period_starts(now, tz)
    key = _key_arg(key_id)
    async with pool.acquire() as conn:
        totals = await conn.fetchrow(repo.SUMMARY_TOTALS.pick(account, key_id), account, p.today, p.week, p.month,
                                     *key)
        models = await conn.fetch(repo.SUMMARY_BY_MODEL.pick(account, key_id), account, p.month, *key)
        balance = await (conn.fetchrow(repo.BALANCE, account) if account else conn.fetchrow(repo.BALANCE_ALL))
    assert totals is not None

    def period(name: str, since: datetime) -> PeriodTotals:
        return PeriodTotals(since=since.astimezone(tz), **{
            f: totals[f"{name}_{f}"]
            for f in ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_micros")})

    return Summary(
        account_id=account, key_id=key_id or None, tz=tz.key,
        balance_micros=balance["balance_micros"] if balance else None,
        balance_as_of=balance["as_of"] if balance else None,
        balance_source="events" if balance and balance["balance_micros"] is not None else "unknown",
        today=period("today", p.today), week=period("week", p.week), month=period("month", p.month),
        by_model=[ModelTotals(**dict(r)) for r in models],
    )


async def series(pool: asyncpg.Pool, account: str | None, rng: Range, tz: ZoneInfo, granularity: str,
                 group_by: str, key_id: str = "") -> Series:
    rows = await pool.fetch(repo.SERIES.pick(account, key_id), account, rng.start, rng.end, granularity, tz.key,
                            group_by, *_key_arg(key_id))
    points = [SeriesPoint(bucket=r["bucket"].astimezone(tz), group=r["grp"], requests=r["requests"],
                          errors=r["errors"], prompt_tokens=r["prompt_tokens"],
                          completion_tokens=r["completion_tokens"], cached_tokens=r["cached_tokens"],
                          cost_micros=r["cost_micros"]) for r in rows]
    return Series(account_id=account, key_id=key_id or None, granularity=granularity, group_by=group_by, tz=tz.key,
                  start=rng.start.astimezone(tz), end=rng.end.astimezone(tz), points=points)


async def keys_usage(pool: asyncpg.Pool, account: str | None, rng: Range) -> list[KeyUsage]:
    rows = await pool.fetch(repo.KEYS_USAGE if account else repo.KEYS_USAGE_ALL, account, rng.start, rng.end)
    return [KeyUsage(account_id=r["account_id"], key_id=r["key_id"], requests=r["requests"],
                     errors=r["errors"],
                     prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
                     cost_micros=r["cost_micros"], last_used_hour=r["last_hour"]) for r in rows]


class MemberUsage(msgspec.Struct, kw_only=True):
    user_id: str  # the person behind the keys ('' for requests recorded without one)
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


async def members_usage(pool: asyncpg.Pool, account: str, rng: Range) -> list[MemberUsage]:
    """Per person, from the request log (the aggregates are per key and model, not per person)."""
    rows = await pool.fetch(repo.MEMBERS_USAGE, account, rng.start, rng.end)
    return [MemberUsage(user_id=r["user_id"], requests=r["requests"], errors=r["errors"],
                        prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
                        cost_micros=r["cost_micros"]) for r in rows]


@dataclass(frozen=True)
class LogFilter:
    account: str | None
    rng: Range
    key_id: str = ""
    model: str = ""
    status_min: int = 0
    status_max: int = 999

    def args(self) -> list[object]:
        return [self.account, self.rng.start, self.rng.end, self.key_id, self.model, self.status_min,
                self.status_max]


def status_range(status: str | None) -> tuple[int, int]:
    """`ok` (below 400), `error` (400 and up), or one exact HTTP status."""
    if not status:
        return 0, 999
    if status == "ok":
        return 0, 399
    if status == "error":
        return 400, 999
    if status.isdigit() and 100 <= int(status) <= 599:
        return int(status), int(status)
    raise ServiceError("status must be ok, error or an HTTP status code", code="invalid_status",
                       field="status")


def encode_cursor(ts: datetime, request_id: str) -> str:
    return base64.urlsafe_b64encode(f"{ts.isoformat()}|{request_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, request_id = raw.split("|", 1)
        when = datetime.fromisoformat(ts)
        if when.tzinfo is None or not request_id:
            raise ValueError(raw)
        return when, request_id
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ServiceError("cursor is not one this API issued", code="invalid_cursor",
                           field="cursor") from None


def _item(r: asyncpg.Record, admin: bool) -> LogItem:
    return LogItem(
        time=r["ts"].astimezone(UTC), request_id=r["request_id"], account_id=r["account_id"],
        user_id=r["user_id"], key_id=r["key_id"], model=r["model"],
        channel_id=r["channel_id"] if admin else "", dialect=r["dialect"], endpoint=r["endpoint"],
        stream=r["stream"], status=r["status"], error_code=r["error_code"], prompt_tokens=r["prompt_tokens"],
        completion_tokens=r["completion_tokens"], cached_tokens=r["cached_tokens"],
        cost_micros=r["cost_micros"], charged=r["charged_at"] is not None, latency_ms=r["latency_ms"],
        ttft_ms=r["ttft_ms"], upstream_cost_micros=r["upstream_cost_micros"] if admin else None,
    )


async def log_page(pool: asyncpg.Pool, f: LogFilter, *, limit: int, cursor: str | None,
                   admin: bool) -> LogPage:
    after_ts, after_id = decode_cursor(cursor) if cursor else (None, "")
    rows = await pool.fetch(repo.LOG_PAGE if f.account else repo.LOG_PAGE_ALL, *f.args(), after_ts, after_id,
                            limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["ts"], rows[-1]["request_id"]) if more and rows else None
    return LogPage(items=[_item(r, admin) for r in rows], next_cursor=nxt)


CSV_COLUMNS = ["time", "request_id", "account_id", "user_id", "key_id", "model", "channel_id", "dialect",
               "endpoint", "stream", "status", "error_code", "prompt_tokens", "completion_tokens",
               "cached_tokens", "cost_micros", "cost_usd", "charged", "latency_ms", "ttft_ms"]


def _cell(value: str) -> str:
    # A spreadsheet would run a cell that starts like a formula; names come from users (models, key labels).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


_UTC = ZoneInfo("UTC")


async def export_csv(pool: asyncpg.Pool, f: LogFilter, *, admin: bool, tz: ZoneInfo = _UTC,
                     rows_per_chunk: int = 500) -> AsyncIterator[bytes]:
    """The log as CSV, read through a server-side cursor and sent in chunks: memory stays flat at any size.
    Times are written in `tz` (with their offset): a spreadsheet shows them as the caller's local time."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield out.getvalue().encode()
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        pending = 0
        out.seek(0)
        out.truncate()
        sql = repo.LOG_EXPORT if f.account else repo.LOG_EXPORT_ALL
        async for r in conn.cursor(sql, *f.args(), prefetch=rows_per_chunk):
            writer.writerow([
                r["ts"].astimezone(tz).isoformat(), r["request_id"], r["account_id"], _cell(r["user_id"]),
                _cell(r["key_id"]), _cell(r["model"]), _cell(r["channel_id"]) if admin else "",
                r["dialect"], r["endpoint"], "true" if r["stream"] else "false", r["status"],
                _cell(r["error_code"]), r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"],
                r["cost_micros"], usd(r["cost_micros"]).lstrip("$"), "true" if r["charged_at"] else "false",
                r["latency_ms"], r["ttft_ms"],
            ])
            pending += 1
            if pending >= rows_per_chunk:
                yield out.getvalue().encode()
                out.seek(0)
                out.truncate()
                pending = 0
        if pending:
            yield out.getvalue().encode()
