"""Every SQL statement of the usage service. Tables are qualified with the `usage` schema."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, NamedTuple

import asyncpg

from services.usage.rollup import Charge, Deltas, LogRow

SCHEMA = "usage"

# --- writes (the usage-log consumer) ----------------------------------------------------------------------

# One writer at a time for request rows and their charges. Without it, two replicas applying a request's
# usage.recorded and its usage.charged at the same moment each miss the other's uncommitted work: the row
# lands uncharged and the charge is parked forever. One writer applies ~10k events/s (bench/usage_bench.py),
# far above what the gateway produces; more replicas give failover, not write throughput.
LOCK_LOG_WRITER = "SELECT pg_advisory_xact_lock(hashtext('usage.request_log')::bigint)"

ENSURE_PARTITION = "SELECT usage.ensure_log_partition($1::date)"

TAKE_PENDING_CHARGES = """
DELETE FROM usage.pending_charges WHERE request_id = ANY($1::text[])
RETURNING request_id, amount_micros, upstream_cost_micros, charged_at
"""

INSERT_LOG_ROWS = """
INSERT INTO usage.request_log (ts, request_id, account_id, user_id, key_id, model, upstream_model,
    channel_id, dialect, endpoint, stream, status, error_code, prompt_tokens, completion_tokens,
    cached_tokens,
    cost_micros, upstream_cost_micros, charged_at, latency_ms, ttft_ms)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[], $11::boolean[], $12::int[], $13::text[], $14::bigint[],
    $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], $19::timestamptz[], $20::int[], $21::int[])
ON CONFLICT DO NOTHING
RETURNING request_id
"""

# Only a row not yet charged takes a charge, so a second charge for the same request never adds twice.
APPLY_CHARGES = """
UPDATE usage.request_log r
SET cost_micros = c.amount, upstream_cost_micros = c.upstream_cost, charged_at = c.charged_at
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[]) AS c(request_id, amount, upstream_cost,
     charged_at)
WHERE r.request_id = c.request_id AND r.charged_at IS NULL
RETURNING r.request_id, r.ts, r.account_id, r.key_id, r.model, r.cost_micros
"""

EXISTING_REQUESTS = "SELECT DISTINCT request_id FROM usage.request_log WHERE request_id = ANY($1::text[])"

PARK_CHARGES = """
INSERT INTO usage.pending_charges (request_id, amount_micros, upstream_cost_micros, charged_at)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[])
ON CONFLICT DO NOTHING
"""

_AGG_COLUMNS = (
    "requests, errors, prompt_tokens, completion_tokens, cached_tokens, cost_micros, latency_ms_sum"
)
_AGG_UPDATE = ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in _AGG_COLUMNS.split(", "))

UPSERT_HOURLY = f"""
INSERT INTO usage.usage_hourly AS t (account_id, hour, key_id, model, {_AGG_COLUMNS})
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
    $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
ON CONFLICT (account_id, hour, key_id, model) DO UPDATE SET {_AGG_UPDATE}
"""

UPSERT_DAILY = f"""
INSERT INTO usage.usage_daily AS t (account_id, day, key_id, model, {_AGG_COLUMNS})
SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
    $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
ON CONFLICT (account_id, day, key_id, model) DO UPDATE SET {_AGG_UPDATE}
"""

# Billing events can arrive out of order: the balance with the newest occurred_at wins.
UPSERT_BALANCES = """
INSERT INTO usage.account_balance AS b (account_id, balance_micros, as_of)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[])
ON CONFLICT (account_id) DO UPDATE SET balance_micros = EXCLUDED.balance_micros, as_of = EXCLUDED.as_of
WHERE EXCLUDED.as_of >= b.as_of
"""


async def ensure_partitions(conn: asyncpg.Connection, months: set[date]) -> None:
    for month in sorted(months):
        await conn.fetchval(ENSURE_PARTITION, month)


async def take_pending_charges(conn: asyncpg.Connection, request_ids: Sequence[str]) -> dict[str, Charge]:
    rows = await conn.fetch(TAKE_PENDING_CHARGES, list(request_ids))
    return {r["request_id"]: Charge(r["request_id"], r["amount_micros"], r["upstream_cost_micros"],
                                    r["charged_at"]) for r in rows}


async def insert_log_rows(conn: asyncpg.Connection, rows: Sequence[LogRow]) -> set[str]:
    """Insert rows (one statement for the batch); returns the request ids actually inserted."""
    if not rows:
        return set()
    tuples = [(r.ts, r.request_id, r.account_id, r.user_id, r.key_id, r.model, r.upstream_model, r.channel_id,
               r.dialect, r.endpoint, r.stream, r.status, r.error_code, r.prompt_tokens, r.completion_tokens,
               r.cached_tokens, r.cost_micros, r.upstream_cost_micros, r.charged_at, r.latency_ms, r.ttft_ms)
              for r in rows]
    cols = list(zip(*tuples, strict=True))
    inserted = await conn.fetch(INSERT_LOG_ROWS, *[list(c) for c in cols])
    return {r["request_id"] for r in inserted}


async def apply_charges(conn: asyncpg.Connection, charges: Sequence[Charge]) -> list[asyncpg.Record]:
    if not charges:
        return []
    return list(await conn.fetch(
        APPLY_CHARGES,
        [c.request_id for c in charges], [c.amount_micros for c in charges],
        [c.upstream_cost_micros for c in charges], [c.charged_at for c in charges],
    ))


async def existing_requests(conn: asyncpg.Connection, request_ids: Sequence[str]) -> set[str]:
    if not request_ids:
        return set()
    return {r["request_id"] for r in await conn.fetch(EXISTING_REQUESTS, list(request_ids))}


async def park_charges(conn: asyncpg.Connection, charges: Sequence[Charge]) -> None:
    if charges:
        await conn.execute(
            PARK_CHARGES,
            [c.request_id for c in charges], [c.amount_micros for c in charges],
            [c.upstream_cost_micros for c in charges], [c.charged_at for c in charges],
        )


def _agg_arrays(items: Sequence[tuple[tuple[str, Any, str, str], Any]]) -> list[list[Any]]:
    return [
        [k[0] for k, _ in items], [k[1] for k, _ in items],
        [k[2] for k, _ in items], [k[3] for k, _ in items],
        [t.requests for _, t in items], [t.errors for _, t in items], [t.prompt_tokens for _, t in items],
        [t.completion_tokens for _, t in items], [t.cached_tokens for _, t in items],
        [t.cost_micros for _, t in items], [t.latency_ms_sum for _, t in items],
    ]


async def upsert_aggregates(conn: asyncpg.Connection, deltas: Deltas) -> None:
    # Sorted keys: two consumers upserting overlapping rows lock them in the same order (no deadlock).
    if deltas.hourly:
        await conn.execute(UPSERT_HOURLY, *_agg_arrays(sorted(deltas.hourly.items())))
    if deltas.daily:
        await conn.execute(UPSERT_DAILY, *_agg_arrays(sorted(deltas.daily.items())))


async def upsert_balances(conn: asyncpg.Connection, balances: dict[str, tuple[int, datetime]]) -> None:
    if balances:
        ids = sorted(balances)
        await conn.execute(UPSERT_BALANCES, ids, [balances[a][0] for a in ids], [balances[a][1] for a in ids])


# --- retention ----------------------------------------------------------------------------------------------

DROP_PARTITIONS_BEFORE = "SELECT usage.drop_log_partitions_before($1)"
PRUNE_PROCESSED = "DELETE FROM usage.processed_events WHERE processed_at < $1"
# A charge whose request row never arrived (or was already dropped by retention) is forgotten after a while.
PRUNE_PENDING_CHARGES = "DELETE FROM usage.pending_charges WHERE received_at < $1"


# --- reads (the API) --------------------------------------------------------------------------------------
# Each read has an "account" form ($1 = account id) and an "all accounts" form (admins), rather than one
# `($1 IS NULL OR account_id = $1)` statement whose generic plan could not use the account index.

_ACCOUNT = "account_id = $1"
_ALL = "$1::text IS NULL"  # keeps the parameter numbering of the account form


def _both_forms(template: str) -> tuple[str, str]:
    return template.replace("{who}", _ACCOUNT), template.replace("{who}", _ALL)


class KeyForms(NamedTuple):
    """One read in four statements: per account or across all, each with or without one API key. Separate
    statements for the same reason as `_both_forms`: `($n = '' OR key_id = $n)` would keep a generic plan off
    the key index. The key forms keep `{who}`: another account's key matches nothing, which is the
    authorization."""

    account: str
    every: str
    account_key: str
    every_key: str

    def pick(self, account: str | None, key_id: str) -> str:
        """The statement; the key forms take `key_id` as their last parameter."""
        if key_id:
            return self.account_key if account else self.every_key
        return self.account if account else self.every


def _key_forms(template: str, key_param: int) -> KeyForms:
    unkeyed = template.replace("{key}", "")
    keyed = template.replace("{key}", f"AND key_id = ${key_param}")
    return KeyForms(*_both_forms(unkeyed), *_both_forms(keyed))


# Dashboard totals since the start of today / this week / this month (instants computed in the caller's zone).
SUMMARY_TOTALS = _key_forms("""
SELECT
  coalesce(sum(requests) FILTER (WHERE hour >= $2), 0)::bigint          AS today_requests,
  coalesce(sum(errors) FILTER (WHERE hour >= $2), 0)::bigint            AS today_errors,
  coalesce(sum(prompt_tokens) FILTER (WHERE hour >= $2), 0)::bigint     AS today_prompt_tokens,
  coalesce(sum(completion_tokens) FILTER (WHERE hour >= $2), 0)::bigint AS today_completion_tokens,
  coalesce(sum(cost_micros) FILTER (WHERE hour >= $2), 0)::bigint       AS today_cost_micros,
  coalesce(sum(requests) FILTER (WHERE hour >= $3), 0)::bigint          AS week_requests,
  coalesce(sum(errors) FILTER (WHERE hour >= $3), 0)::bigint            AS week_errors,
  coalesce(sum(prompt_tokens) FILTER (WHERE hour >= $3), 0)::bigint     AS week_prompt_tokens,
  coalesce(sum(completion_tokens) FILTER (WHERE hour >= $3), 0)::bigint AS week_completion_tokens,
  coalesce(sum(cost_micros) FILTER (WHERE hour >= $3), 0)::bigint       AS week_cost_micros,
  coalesce(sum(requests) FILTER (WHERE hour >= $4), 0)::bigint          AS month_requests,
  coalesce(sum(errors) FILTER (WHERE hour >= $4), 0)::bigint            AS month_errors,
  coalesce(sum(prompt_tokens) FILTER (WHERE hour >= $4), 0)::bigint     AS month_prompt_tokens,
  coalesce(sum(completion_tokens) FILTER (WHERE hour >= $4), 0)::bigint AS month_completion_tokens,
  coalesce(sum(cost_micros) FILTER (WHERE hour >= $4), 0)::bigint       AS month_cost_micros
FROM usage.usage_hourly
WHERE {who} AND hour >= least($2, $3, $4) {key}
""", 5)

SUMMARY_BY_MODEL = _key_forms("""
SELECT model, sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
       sum(cost_micros)::bigint AS cost_micros
FROM usage.usage_hourly
WHERE {who} AND hour >= $2 {key}
GROUP BY model
ORDER BY cost_micros DESC, requests DESC, model
""", 3)

BALANCE = "SELECT balance_micros, as_of FROM usage.account_balance WHERE account_id = $1"
BALANCE_ALL = (
    "SELECT sum(balance_micros)::bigint AS balance_micros, max(as_of) AS as_of FROM usage.account_balance"
)

# $2/$3 the UTC range, $4 the bucket ('hour' | 'day' | 'week' | 'month'), $5 the zone for bucket boundaries,
# $6 the grouping ('model' | 'key' | 'none'); the key forms: $7 the one API key.
SERIES = _key_forms("""
SELECT date_trunc($4, hour AT TIME ZONE $5) AT TIME ZONE $5 AS bucket,
       CASE $6 WHEN 'model' THEN model WHEN 'key' THEN key_id ELSE '' END AS grp,
       sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
       sum(cached_tokens)::bigint AS cached_tokens, sum(cost_micros)::bigint AS cost_micros
FROM usage.usage_hourly
WHERE {who} AND hour >= $2 AND hour < $3 {key}
GROUP BY 1, 2
ORDER BY 1, 2
""", 7)

KEYS_USAGE, KEYS_USAGE_ALL = _both_forms("""
SELECT account_id, key_id, sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
       sum(cost_micros)::bigint AS cost_micros, max(hour) AS last_hour
FROM usage.usage_hourly
WHERE {who} AND hour >= $2 AND hour < $3
GROUP BY account_id, key_id
ORDER BY cost_micros DESC, requests DESC, key_id
""")

# Per person over [$2, $3): an organisation's members (a personal account has one person).
MEMBERS_USAGE = """
SELECT user_id, count(*)::bigint AS requests, (count(*) FILTER (WHERE status >= 400))::bigint AS errors,
       coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
       coalesce(sum(cost_micros), 0)::bigint AS cost_micros
FROM usage.request_log
WHERE account_id = $1 AND ts >= $2 AND ts < $3
GROUP BY user_id
ORDER BY cost_micros DESC, user_id
"""

_LOG_COLUMNS = """ts, request_id, account_id, user_id, key_id, model, upstream_model, channel_id, dialect,
       endpoint, stream, status, error_code, prompt_tokens, completion_tokens, cached_tokens, cost_micros,
       upstream_cost_micros, charged_at, latency_ms, ttft_ms"""

# $2/$3 the UTC range, $4 key ('' = any), $5 model ('' = any), $6/$7 status range, $8/$9 the cursor (the last
# row's ts and request id; NULL for the first page), $10 the page size. Newest first, ties by request id.
_LOG_FILTER = """
FROM usage.request_log
WHERE {who} AND ts >= $2 AND ts < $3
  AND ($4 = '' OR key_id = $4) AND ($5 = '' OR model = $5) AND status BETWEEN $6 AND $7
"""
LOG_PAGE, LOG_PAGE_ALL = _both_forms(
    f"SELECT {_LOG_COLUMNS}{_LOG_FILTER}"
    "  AND ($8::timestamptz IS NULL OR (ts, request_id) < ($8, $9))\n"
    "ORDER BY ts DESC, request_id DESC\nLIMIT $10"
)
# The CSV export: the same filter, no paging (read through a server-side cursor).
LOG_EXPORT, LOG_EXPORT_ALL = _both_forms(
    f"SELECT {_LOG_COLUMNS}{_LOG_FILTER}ORDER BY ts DESC, request_id DESC"
)

# --- rebuilding aggregates from the log (recovery, benchmarks) ----------------------------------------------
# Replaces the aggregates of [$1, $2) with what the log holds; only meaningful where the log is still kept.

DELETE_HOURLY_RANGE = "DELETE FROM usage.usage_hourly WHERE hour >= $1 AND hour < $2"
DELETE_DAILY_RANGE = "DELETE FROM usage.usage_daily WHERE day >= ($1 AT TIME ZONE 'UTC')::date" \
    " AND day < ($2 AT TIME ZONE 'UTC')::date"
_FROM_LOG = """
SELECT account_id, {bucket}, key_id, model, count(*), count(*) FILTER (WHERE status >= 400),
       sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(cost_micros), sum(latency_ms)
FROM usage.request_log WHERE ts >= $1 AND ts < $2
GROUP BY 1, 2, 3, 4
"""
HOURLY_FROM_LOG = (
    f"INSERT INTO usage.usage_hourly (account_id, hour, key_id, model, {_AGG_COLUMNS})"
    + _FROM_LOG.replace("{bucket}", "date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'")
)
DAILY_FROM_LOG = (
    f"INSERT INTO usage.usage_daily (account_id, day, key_id, model, {_AGG_COLUMNS})"
    + _FROM_LOG.replace("{bucket}", "(ts AT TIME ZONE 'UTC')::date")
)


# 'YYYYMM' of the oldest request-log partition still kept (NULL when there is none).
OLDEST_LOG_MONTH = """
SELECT min(substr(c.relname, 14)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'usage.request_log'::regclass AND c.relname ~ '^request_log_p[0-9]{6}$'
"""


async def rebuild_aggregates(conn: asyncpg.Connection, start: datetime, end: datetime) -> None:
    """`start`/`end` should be whole UTC days, so daily rows are rebuilt from complete days."""
    async with conn.transaction():
        await conn.execute(DELETE_HOURLY_RANGE, start, end)
        await conn.execute(DELETE_DAILY_RANGE, start, end)
        await conn.execute(HOURLY_FROM_LOG, start, end)
        await conn.execute(DAILY_FROM_LOG, start, end)
