"""Time zones, ranges and buckets for the API. Aggregates are stored per UTC hour; the caller's zone decides
where a day, week or month begins. Pure functions: no I/O.

Zones whose offset is not a whole hour (Asia/Kolkata, +05:30) see day boundaries rounded to the UTC hour the
aggregates are kept in; the request log itself is exact to the microsecond.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.web import ServiceError

GRANULARITIES = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1),
                 "month": timedelta(days=31)}
GROUPINGS = ("none", "model", "key")


def zone(name: str) -> ZoneInfo:
    try:
        if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ServiceError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin",
                           code="invalid_tz", field="tz") from None


def instant(text: str | None, tz: ZoneInfo, field: str) -> datetime | None:
    """ISO 8601 date or date-time; one without an offset is read in `tz`."""
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ServiceError(f"{field} must be an ISO 8601 date or date-time, got {text[:40]!r}",
                           code="invalid_time", field=field) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Range:
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC


def time_range(since: str | None, until: str | None, tz: ZoneInfo, now: datetime,
               default_span: timedelta) -> Range:
    end = instant(until, tz, "to") or now
    start = instant(since, tz, "from") or end - default_span
    if start >= end:
        raise ServiceError("`from` must be before `to`", code="invalid_range", field="from")
    return Range(start, end)


def hour_floor(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Periods:
    today: datetime
    week: datetime
    month: datetime


def period_starts(now: datetime, tz: ZoneInfo) -> Periods:
    """Starts (as UTC instants) of the caller's today, this ISO week (Monday) and this calendar month."""
    local = now.astimezone(tz)
    midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
    # Aware arithmetic with one tzinfo is wall-clock arithmetic, so this stays a local midnight across DST.
    monday = midnight - timedelta(days=local.weekday())
    first = datetime(local.year, local.month, 1, tzinfo=tz)
    return Periods(*(hour_floor(t) for t in (midnight, monday, first)))


def check_series(granularity: str, group_by: str, rng: Range, max_buckets: int) -> None:
    if granularity not in GRANULARITIES:
        raise ServiceError(f"granularity must be one of {', '.join(GRANULARITIES)}",
                           code="invalid_granularity", field="granularity")
    if group_by not in GROUPINGS:
        raise ServiceError(f"group_by must be one of {', '.join(GROUPINGS)}", code="invalid_group_by",
                           field="group_by")
    buckets = (rng.end - rng.start) / GRANULARITIES[granularity]
    if buckets > max_buckets:
        raise ServiceError(f"{int(buckets)} {granularity} buckets requested; at most {max_buckets} per query",
                           code="range_too_large", field="granularity")
