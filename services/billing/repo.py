"""Billing's SQL, as constants with $n parameters; a helper where a statement needs a little Python around it.

Writers serialise per account on the `wallets` row (`FOR UPDATE`, taken in account order when a batch touches
several); plan grants and key usage are only changed by a writer holding the wallet row, so they need no lock
of their own. The ledger's (account_id, seq) primary key catches any writer that did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

SCHEMA = "billing"

LEDGER_COLUMNS = (
    "account_id", "seq", "kind", "amount_micros", "balance_after", "event_id", "request_id", "reference",
    "reason", "key_id", "model", "channel_id", "price_micros", "plan_micros", "cost_micros", "bonus_micros",
    "paid_micros", "occurred_at",
)

ENSURE_WALLETS = (
    "INSERT INTO billing.wallets (account_id) SELECT unnest($1::text[]) ON CONFLICT (account_id) DO NOTHING"
)
LOCK_WALLETS = """
SELECT account_id, balance_micros, seq, version, low_threshold_micros, low_state
FROM billing.wallets WHERE account_id = ANY($1::text[]) ORDER BY account_id FOR UPDATE
"""
GET_WALLET = """
SELECT account_id, balance_micros, seq, version, low_threshold_micros, low_state, updated_at
FROM billing.wallets WHERE account_id = $1
"""
UPDATE_WALLETS = """
UPDATE billing.wallets w
SET balance_micros = u.balance, seq = u.seq, low_state = u.low_state, version = w.version + 1,
    updated_at = now()
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::smallint[]) AS u(account_id, balance, seq, low_state)
WHERE w.account_id = u.account_id
RETURNING w.account_id, w.version
"""
SET_LOW_STATE = "UPDATE billing.wallets SET low_state = $2 WHERE account_id = $1"
SET_THRESHOLD = """
UPDATE billing.wallets SET low_threshold_micros = $2, low_state = $3, updated_at = now() WHERE account_id = $1
"""
BUMP_VERSION = "UPDATE billing.wallets SET version = version + 1 WHERE account_id = $1 RETURNING version"
ALL_WALLETS = "SELECT account_id, balance_micros, version FROM billing.wallets ORDER BY account_id"

LIVE_GRANTS = """
SELECT grant_id, account_id, remaining_micros, expires_at, models
FROM billing.plan_grants
WHERE account_id = ANY($1::text[]) AND remaining_micros > 0 AND expires_at > $2
"""
HELD_GRANTS = """
SELECT grant_id, plan_id, plan_name, credit_micros, remaining_micros, models, expires_at, paid_micros,
       created_at
FROM billing.plan_grants WHERE account_id = $1 ORDER BY expires_at DESC
"""
INSERT_GRANT = """
INSERT INTO billing.plan_grants (grant_id, account_id, plan_id, plan_name, credit_micros, remaining_micros,
                                 models, expires_at, paid_micros, reference)
VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9)
"""
TAKE_FROM_GRANTS = """
UPDATE billing.plan_grants g SET remaining_micros = g.remaining_micros - u.amount
FROM unnest($1::text[], $2::bigint[]) AS u(grant_id, amount) WHERE g.grant_id = u.grant_id
"""
INSERT_PLAN_DEBITS = """
INSERT INTO billing.plan_debits (grant_id, event_id, amount_micros)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
"""
EXPIRED_UNSYNCED = """
SELECT DISTINCT account_id FROM billing.plan_grants
WHERE expires_at <= now() AND NOT expiry_synced AND remaining_micros > 0 AND models = '{}'
"""
MARK_EXPIRY_SYNCED = """
UPDATE billing.plan_grants SET expiry_synced = true WHERE account_id = $1 AND expires_at <= now()
"""

ADD_KEY_USAGE = """
INSERT INTO billing.key_usage (key_id, used_micros) SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (key_id) DO UPDATE SET used_micros = billing.key_usage.used_micros + EXCLUDED.used_micros
RETURNING key_id, used_micros
"""
KEY_USAGE = "SELECT key_id, used_micros FROM billing.key_usage WHERE key_id = ANY($1::text[])"

LEDGER_BY_EVENTS = """
SELECT event_id, account_id, key_id, model, channel_id, request_id, amount_micros, price_micros, plan_micros,
       cost_micros, balance_after
FROM billing.ledger WHERE event_id = ANY($1::text[])
"""
LEDGER_BY_EVENT = "SELECT * FROM billing.ledger WHERE event_id = $1"
USAGE_BY_REQUEST = "SELECT * FROM billing.ledger WHERE request_id = $1 AND kind = 'usage'"
LEDGER_PAGE = """
SELECT seq, kind, amount_micros, balance_after, event_id, request_id, reference, reason, key_id, model,
       channel_id, price_micros, plan_micros, bonus_micros, paid_micros, occurred_at
FROM billing.ledger
WHERE account_id = $1
  AND ($2::bigint IS NULL OR seq < $2)
  AND ($3::text IS NULL OR kind = $3)
  AND ($4::text IS NULL OR model = $4)
  AND ($5::timestamptz IS NULL OR occurred_at >= $5)
  AND ($6::timestamptz IS NULL OR occurred_at < $6)
ORDER BY seq DESC LIMIT $7
"""

INSERT_REJECTED = """
INSERT INTO billing.rejected_events (event_id, reason) SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT DO NOTHING
"""

# --- plans, payments, codes, tiers -------------------------------------------------------------------------

LIST_PLANS = """
SELECT plan_id, name, price_micros, credit_micros, validity_days, models, active FROM billing.plans
WHERE active OR $1 ORDER BY price_micros, plan_id
"""
GET_PLAN = """
SELECT plan_id, name, price_micros, credit_micros, validity_days, models, active FROM billing.plans
WHERE plan_id = $1
"""
UPSERT_PLAN = """
INSERT INTO billing.plans (plan_id, name, price_micros, credit_micros, validity_days, models, active)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (plan_id) DO UPDATE SET name = EXCLUDED.name, price_micros = EXCLUDED.price_micros,
    credit_micros = EXCLUDED.credit_micros, validity_days = EXCLUDED.validity_days, models = EXCLUDED.models,
    active = EXCLUDED.active
RETURNING plan_id, name, price_micros, credit_micros, validity_days, models, active
"""

INSERT_PAYMENT = """
INSERT INTO billing.payments (payment_id, account_id, provider, purpose, plan_id, amount_micros, bonus_micros)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
SET_PAYMENT_CHECKOUT = (
    "UPDATE billing.payments SET provider_ref = $2, checkout_url = $3 WHERE payment_id = $1"
)
GET_PAYMENT = "SELECT * FROM billing.payments WHERE payment_id = $1"
# The one transition that credits: -> paid happens once, whatever number of webhooks arrive (the caller holds
# the row lock and has seen it unpaid).
MARK_PAID = """
UPDATE billing.payments SET status = 'paid', paid_at = now()
WHERE payment_id = $1 AND status <> 'paid' RETURNING *
"""
MARK_FAILED = "UPDATE billing.payments SET status = 'failed' WHERE payment_id = $1 AND status = 'pending'"

INSERT_CODES = """
INSERT INTO billing.codes (code_hash, batch_id, amount_micros, expires_at)
SELECT unnest($1::text[]), $2, $3, $4
"""
# Race-safe single use: only the first UPDATE finds redeemed_at NULL.
REDEEM_CODE = """
UPDATE billing.codes SET redeemed_by = $2, redeemed_at = now()
WHERE code_hash = $1 AND redeemed_at IS NULL AND expires_at > now()
RETURNING batch_id, amount_micros
"""
CODE_STATE = "SELECT redeemed_at, expires_at FROM billing.codes WHERE code_hash = $1"

GET_OPTION = "SELECT value FROM billing.options WHERE name = $1"
SET_OPTION = """
INSERT INTO billing.options (name, value) VALUES ($1, $2::jsonb)
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
"""

# --- margin ------------------------------------------------------------------------------------------------

MARGIN_BY_MODEL = """
SELECT model AS key, count(*) AS requests, sum(price_micros) AS sell_micros, sum(cost_micros) AS cost_micros
FROM billing.ledger WHERE kind = 'usage' AND occurred_at >= $1 AND occurred_at < $2
GROUP BY model ORDER BY sum(price_micros) - sum(cost_micros) DESC
"""
MARGIN_BY_CHANNEL = """
SELECT channel_id AS key, count(*) AS requests, sum(price_micros) AS sell_micros,
       sum(cost_micros) AS cost_micros
FROM billing.ledger WHERE kind = 'usage' AND occurred_at >= $1 AND occurred_at < $2
GROUP BY channel_id ORDER BY sum(price_micros) - sum(cost_micros) DESC
"""

# --- rebuild and verify ----------------------------------------------------------------------------------

LEDGER_ALL = """
SELECT account_id, seq, amount_micros, balance_after, event_id FROM billing.ledger ORDER BY account_id, seq
"""
DUPLICATE_EVENT_IDS = "SELECT event_id, count(*) FROM billing.ledger GROUP BY event_id HAVING count(*) > 1"
FOLDED_WALLETS = """
SELECT account_id, coalesce(sum(amount_micros), 0) AS balance, coalesce(max(seq), 0) AS seq
FROM billing.ledger GROUP BY account_id
"""
FOLDED_GRANTS = """
SELECT g.grant_id, g.credit_micros - coalesce(sum(d.amount_micros), 0) AS remaining
FROM billing.plan_grants g LEFT JOIN billing.plan_debits d USING (grant_id)
GROUP BY g.grant_id, g.credit_micros
"""
FOLDED_KEY_USAGE = """
SELECT key_id, sum(price_micros) AS used FROM billing.ledger
WHERE kind = 'usage' AND key_id <> '' GROUP BY key_id
"""
USAGE_SPLIT_MISMATCHES = """
SELECT l.event_id FROM billing.ledger l
LEFT JOIN (SELECT event_id, sum(amount_micros) AS plan FROM billing.plan_debits GROUP BY event_id) d
    USING (event_id)
WHERE l.kind = 'usage'
  AND (l.amount_micros <> -(l.price_micros - l.plan_micros) OR l.plan_micros <> coalesce(d.plan, 0))
"""
PROJECTED_WALLETS = "SELECT account_id, balance_micros AS balance, seq FROM billing.wallets"
PROJECTED_GRANTS = "SELECT grant_id, remaining_micros AS remaining FROM billing.plan_grants"
PROJECTED_KEY_USAGE = "SELECT key_id, used_micros AS used FROM billing.key_usage"
REBUILD_WALLETS = """
UPDATE billing.wallets w
SET balance_micros = coalesce(f.balance, 0), seq = coalesce(f.seq, 0), version = w.version + 1,
    updated_at = now()
FROM billing.wallets w2 LEFT JOIN (
    SELECT account_id, sum(amount_micros) AS balance, max(seq) AS seq FROM billing.ledger GROUP BY account_id
) f ON f.account_id = w2.account_id
WHERE w.account_id = w2.account_id
"""
REBUILD_MISSING_WALLETS = """
INSERT INTO billing.wallets (account_id, balance_micros, seq)
SELECT account_id, sum(amount_micros), max(seq) FROM billing.ledger GROUP BY account_id
ON CONFLICT (account_id) DO NOTHING
"""
REBUILD_GRANTS = """
UPDATE billing.plan_grants g SET remaining_micros = g.credit_micros - coalesce(
    (SELECT sum(d.amount_micros) FROM billing.plan_debits d WHERE d.grant_id = g.grant_id), 0)
"""
LOCK_PROJECTIONS = (
    "LOCK TABLE billing.wallets, billing.plan_grants, billing.key_usage IN SHARE ROW EXCLUSIVE MODE"
)
REBUILD_KEY_USAGE_CLEAR = "DELETE FROM billing.key_usage"
REBUILD_KEY_USAGE = """
INSERT INTO billing.key_usage (key_id, used_micros)
SELECT key_id, sum(price_micros) FROM billing.ledger WHERE kind = 'usage' AND key_id <> '' GROUP BY key_id
"""


async def insert_ledger(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """COPY the rows in: one round trip for a whole batch, the fastest way Postgres takes rows."""
    await conn.copy_records_to_table("ledger", schema_name=SCHEMA, columns=list(LEDGER_COLUMNS), records=rows)
