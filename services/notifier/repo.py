"""The notifier's SQL (schema `notifier`): recipients, preferences and the outbox."""

from __future__ import annotations

SCHEMA = "notifier"

UPSERT_RECIPIENT = """
INSERT INTO notifier.recipients (account_id, email, as_of) VALUES ($1, $2, $3)
ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, as_of = excluded.as_of
WHERE notifier.recipients.as_of < excluded.as_of
"""

GET_PREFS = """
SELECT account_id, email, email_alerts, webhook_url, webhook_secret, webhook_alerts, updated_at
FROM notifier.preferences WHERE account_id = $1
"""

UPSERT_PREFS = """
INSERT INTO notifier.preferences
    (account_id, email, email_alerts, webhook_url, webhook_secret, webhook_alerts)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, email_alerts = excluded.email_alerts,
    webhook_url = excluded.webhook_url, webhook_secret = excluded.webhook_secret,
    webhook_alerts = excluded.webhook_alerts, updated_at = now()
RETURNING account_id, email, email_alerts, webhook_url, webhook_secret, webhook_alerts, updated_at
"""

REPLACE_SIGNING_KEY = """
UPDATE notifier.preferences SET webhook_secret = $2, updated_at = now()
WHERE account_id = $1 AND webhook_url IS NOT NULL
"""

GET_RECIPIENT = "SELECT email FROM notifier.recipients WHERE account_id = $1"

INSERT_OUTBOX = """
INSERT INTO notifier.outbox (dedupe_key, channel, recipient, account_id, kind, event_type, payload, sealed)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (dedupe_key, channel, recipient) DO NOTHING
RETURNING id
"""

# Claim due rows for one channel: a lease (claimed_until) instead of a lock held across the network call, so a
# slow SMTP server holds no Postgres connection, and a sender killed mid-send frees its row when the lease
# ends.
CLAIM_DUE = """
WITH due AS (
    SELECT id FROM notifier.outbox
    WHERE status = 'pending' AND channel = $1 AND next_attempt_at <= now()
      AND (claimed_until IS NULL OR claimed_until < now())
    ORDER BY next_attempt_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE notifier.outbox o
SET claimed_until = now() + make_interval(secs => $3), claim_token = $4, attempts = o.attempts + 1
FROM due WHERE o.id = due.id
RETURNING o.id, o.dedupe_key, o.channel, o.recipient, o.account_id, o.kind, o.event_type, o.payload, o.sealed,
          o.attempts, o.created_at, o.claimed_until
"""

# Every outcome is written only while the lease is still ours (claim_token), so a sender whose lease ran out
# never overwrites the outcome of the one that took over.
MARK_SENT = """
UPDATE notifier.outbox
SET status = 'sent', sent_at = now(), claimed_until = NULL, sealed = NULL, destination = $3, last_error = NULL
WHERE id = $1 AND claim_token = $2 AND status = 'pending'
"""

MARK_RETRY = """
UPDATE notifier.outbox
SET next_attempt_at = now() + make_interval(secs => $3), claimed_until = NULL, last_error = $4,
    destination = $5
WHERE id = $1 AND claim_token = $2 AND status = 'pending'
"""

# Waiting for the account's address is not a failed attempt: the claim's increment is given back.
MARK_WAITING = """
UPDATE notifier.outbox
SET next_attempt_at = now() + make_interval(secs => $3), claimed_until = NULL, last_error = $4,
    attempts = attempts - 1
WHERE id = $1 AND claim_token = $2 AND status = 'pending'
"""

MARK_FAILED = """
UPDATE notifier.outbox
SET status = 'failed', claimed_until = NULL, sealed = NULL, last_error = $3, destination = $4
WHERE id = $1 AND claim_token = $2 AND status = 'pending'
"""

MARK_CANCELLED = """
UPDATE notifier.outbox
SET status = 'cancelled', claimed_until = NULL, sealed = NULL, last_error = $3
WHERE id = $1 AND claim_token = $2 AND status = 'pending'
"""

# Housekeeping. Finished rows go after the retention; processed-event ids are kept longer than JetStream keeps
# events (7 days), so a redelivery can never outlive its de-duplication.
PRUNE_OUTBOX = """
DELETE FROM notifier.outbox
WHERE status IN ('sent', 'cancelled', 'failed') AND created_at < now() - make_interval(days => $1)
"""

BACKLOG = """
SELECT channel, count(*) AS pending, extract(epoch FROM now() - min(created_at)) AS oldest_s
FROM notifier.outbox WHERE status = 'pending' GROUP BY channel
"""

PRUNE_PROCESSED = """
DELETE FROM notifier.processed_events WHERE processed_at < now() - make_interval(days => $1)
"""

GET_DELIVERY = """
SELECT id, channel, kind, event_type, status, attempts, last_error, destination, created_at, sent_at,
       next_attempt_at
FROM notifier.outbox WHERE dedupe_key = $1
"""

LIST_DELIVERIES = """
SELECT id, channel, kind, event_type, status, attempts, last_error, destination, created_at, sent_at,
       next_attempt_at
FROM notifier.outbox
WHERE account_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR channel = $3)
ORDER BY created_at DESC, id DESC
LIMIT $4
"""

# A failed webhook may be retried by its owner; its body was never acknowledged, so sending again is safe. A
# failed password-reset e-mail lost its sealed link and stays failed.
RETRY_FAILED = """
UPDATE notifier.outbox
SET status = 'pending', attempts = 0, next_attempt_at = now(), claimed_until = NULL, last_error = NULL
WHERE id = $1 AND account_id = $2 AND status = 'failed' AND channel = 'webhook'
RETURNING id
"""
