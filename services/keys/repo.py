"""Every SQL statement of the keys service, as constants with $n parameters. Tables live in schema `keys`."""

from __future__ import annotations

# --- accounts -----------------------------------------------------------------------------------------------

ACCOUNT_COLUMNS = 'id, email, email_norm, password_hash, role, status, "group", created_at, updated_at'

INSERT_ACCOUNT = f"""
INSERT INTO keys.accounts (id, email, email_norm, password_hash, role, "group")
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (email_norm) DO NOTHING
RETURNING {ACCOUNT_COLUMNS}
"""

ACCOUNT_BY_EMAIL = f"SELECT {ACCOUNT_COLUMNS} FROM keys.accounts WHERE email_norm = $1"
ACCOUNT_BY_ID = f"SELECT {ACCOUNT_COLUMNS} FROM keys.accounts WHERE id = $1"
ACCOUNT_BY_ID_FOR_UPDATE = f"SELECT {ACCOUNT_COLUMNS} FROM keys.accounts WHERE id = $1 FOR UPDATE"

SEARCH_ACCOUNTS = f"""
SELECT {ACCOUNT_COLUMNS}, count(*) OVER () AS total FROM keys.accounts
WHERE ($1 = '' OR email_norm LIKE '%' || $1 || '%' OR id = $1)
  AND ($2 = '' OR status = $2) AND ($3 = '' OR role = $3)
ORDER BY created_at DESC, id
LIMIT $4 OFFSET $5
"""

UPDATE_ACCOUNT = f"""
UPDATE keys.accounts SET status = $2, "group" = $3, role = $4, updated_at = now()
WHERE id = $1
RETURNING {ACCOUNT_COLUMNS}
"""

SET_PASSWORD = "UPDATE keys.accounts SET password_hash = $2, updated_at = now() WHERE id = $1"  # noqa: S105 (SQL, not a password)

# --- sessions -----------------------------------------------------------------------------------------------

INSERT_SESSION = "INSERT INTO keys.sessions (token_hash, account_id, client_ip) VALUES ($1, $2, $3)"

# The session with its account, if it has not been idle for longer than $2 seconds nor lived longer than $3.
LIVE_SESSION = """
SELECT s.token_hash, s.last_seen_at, a.id, a.email, a.email_norm, a.password_hash, a.role, a.status,
       a."group", a.created_at, a.updated_at
FROM keys.sessions s JOIN keys.accounts a ON a.id = s.account_id
WHERE s.token_hash = $1
  AND s.last_seen_at > now() - make_interval(secs => $2)
  AND s.created_at > now() - make_interval(secs => $3)
"""

# Written at most once a minute per session, so reads stay reads.
TOUCH_SESSION = """
UPDATE keys.sessions SET last_seen_at = now()
WHERE token_hash = $1 AND last_seen_at < now() - interval '60 seconds'
"""

DELETE_SESSION = "DELETE FROM keys.sessions WHERE token_hash = $1"
DELETE_ACCOUNT_SESSIONS = "DELETE FROM keys.sessions WHERE account_id = $1"
DELETE_OTHER_SESSIONS = "DELETE FROM keys.sessions WHERE account_id = $1 AND token_hash <> $2"
DELETE_STALE_SESSIONS = """
DELETE FROM keys.sessions
WHERE last_seen_at < now() - make_interval(secs => $1) OR created_at < now() - make_interval(secs => $2)
"""

# --- password resets ----------------------------------------------------------------------------------------

INSERT_RESET = "INSERT INTO keys.password_resets (token_hash, account_id, expires_at) VALUES ($1, $2, $3)"

# Single use: the row is consumed by the statement that reads it.
CONSUME_RESET = """
UPDATE keys.password_resets SET used_at = now()
WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
RETURNING account_id
"""

# --- API keys -----------------------------------------------------------------------------------------------

KEY_COLUMNS = (
    'k.id, k.account_id, k.user_id, k.key_hash, k.prefix, k.label, k."group", k.status, k.quota_micros,'
    " k.models, k.ip_allow, k.expires_at, k.rpm_limit, k.tpm_limit, k.concurrency_limit, k.last_used_at,"
    " k.created_at, k.updated_at, a.status AS account_status, a.kind AS account_kind,"
    # An org key's holder's allowance and the org's time zone (NULL for personal keys and former members).
    " (SELECT m.allowance_micros FROM keys.org_members m"
    "  WHERE m.org_id = k.account_id AND m.user_id = k.user_id) AS allowance_micros,"
    " (SELECT o.time_zone FROM keys.orgs o WHERE o.id = k.account_id) AS org_time_zone"
)

INSERT_KEY = """
INSERT INTO keys.api_keys (id, account_id, user_id, key_hash, prefix, label, "group", quota_micros, models,
                           ip_allow, expires_at, rpm_limit, tpm_limit, concurrency_limit)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""

_KEYS_JOIN = "keys.api_keys k JOIN keys.accounts a ON a.id = k.account_id"
KEY_BY_ID = f"SELECT {KEY_COLUMNS} FROM {_KEYS_JOIN} WHERE k.id = $1"
KEY_BY_ID_FOR_UPDATE = KEY_BY_ID + " FOR UPDATE OF k"
KEY_BY_HASH = f"SELECT {KEY_COLUMNS} FROM {_KEYS_JOIN} WHERE k.key_hash = $1"

# A rotated-out hash and the key it belonged to.
RETIRED_BY_HASH = f"""
SELECT r.key_hash AS retired_hash, r.grace_until, r.retired_at, {KEY_COLUMNS}
FROM keys.retired_key_hashes r
JOIN keys.api_keys k ON k.id = r.key_id JOIN keys.accounts a ON a.id = k.account_id
WHERE r.key_hash = $1
"""

RETIRED_OF_KEY = """
SELECT key_hash, grace_until, retired_at FROM keys.retired_key_hashes
WHERE key_id = $1 AND retired_at IS NULL
"""

# A key and its rotated-out secrets still in their grace, in one round trip: what is announced after a change.
KEY_WITH_RETIRED = f"""
SELECT {KEY_COLUMNS},
    ARRAY(SELECT r.key_hash FROM keys.retired_key_hashes r
          WHERE r.key_id = k.id AND r.retired_at IS NULL ORDER BY r.key_hash) AS retired_hashes,
    ARRAY(SELECT r.grace_until FROM keys.retired_key_hashes r
          WHERE r.key_id = k.id AND r.retired_at IS NULL ORDER BY r.key_hash) AS retired_graces
FROM {_KEYS_JOIN} WHERE k.id = $1
"""

LIST_KEYS = f"""
SELECT {KEY_COLUMNS}, count(*) OVER () AS total
FROM keys.api_keys k JOIN keys.accounts a ON a.id = k.account_id
WHERE ($1::text IS NULL OR k.account_id = $1) AND k.status <> 'deleted'
  AND ($2 = '' OR k.label ILIKE '%' || $2 || '%' OR k.prefix LIKE $2 || '%')
ORDER BY k.created_at DESC, k.id
LIMIT $3 OFFSET $4
"""

KEYS_OF_ACCOUNT = f"""
SELECT {KEY_COLUMNS} FROM keys.api_keys k JOIN keys.accounts a ON a.id = k.account_id
WHERE k.account_id = $1 AND k.status <> 'deleted'
"""

# An account's keys follow it when it changes group (a demoted account keeps no better-priced keys).
MOVE_ACCOUNT_KEYS = """
UPDATE keys.api_keys SET "group" = $3, updated_at = now()
WHERE account_id = $1 AND "group" = $2 AND status <> 'deleted'
"""

COUNT_LIVE_KEYS = "SELECT count(*) FROM keys.api_keys WHERE account_id = $1 AND status <> 'deleted'"

UPDATE_KEY = """
UPDATE keys.api_keys SET label = $2, "group" = $3, status = $4, quota_micros = $5, models = $6, ip_allow = $7,
    expires_at = $8, rpm_limit = $9, tpm_limit = $10, concurrency_limit = $11, updated_at = now()
WHERE id = $1
"""

# Enable/disable: one statement, committed on its own. $3: the owner the caller must be (NULL: an admin, any
# account). No row: no such key, deleted, or someone else's (all "not found").
SET_KEY_STATUS = """
UPDATE keys.api_keys SET status = $2, updated_at = now()
WHERE id = $1 AND status <> 'deleted' AND ($3::text IS NULL OR account_id = $3)
RETURNING id
"""

DELETE_KEY = """
UPDATE keys.api_keys SET status = 'deleted', deleted_at = now(), updated_at = now()
WHERE id = $1 AND status <> 'deleted'
"""

SET_KEY_HASH = "UPDATE keys.api_keys SET key_hash = $2, prefix = $3, updated_at = now() WHERE id = $1"

INSERT_RETIRED = """
INSERT INTO keys.retired_key_hashes (key_hash, key_id, grace_until, retired_at) VALUES ($1, $2, $3, $4)
"""

# Retire every rotated-out hash of a key at once (the key was deleted or rotated again with no grace).
RETIRE_ALL_OF_KEY = """
UPDATE keys.retired_key_hashes SET retired_at = now(), grace_until = least(grace_until, now())
WHERE key_id = $1 AND retired_at IS NULL
RETURNING key_hash
"""

# Claimed by one scanner: hashes whose grace ended and that gateways have not yet been told about.
CLAIM_ENDED_GRACE = """
UPDATE keys.retired_key_hashes SET retired_at = now()
WHERE key_hash IN (
    SELECT key_hash FROM keys.retired_key_hashes
    WHERE retired_at IS NULL AND grace_until <= now()
    ORDER BY grace_until LIMIT 500 FOR UPDATE SKIP LOCKED)
RETURNING key_hash, key_id, grace_until
"""

# Claimed by one scanner: active keys expiring within $1 seconds that were not yet announced for this expiry.
CLAIM_EXPIRING = """
UPDATE keys.api_keys SET expiry_notified_for = expires_at
WHERE id IN (
    SELECT id FROM keys.api_keys
    WHERE status = 'active' AND expires_at IS NOT NULL
      AND expires_at <= now() + make_interval(secs => $1)
      AND expires_at > now() - interval '1 day'
      AND expiry_notified_for IS DISTINCT FROM expires_at
    ORDER BY expires_at LIMIT 500 FOR UPDATE SKIP LOCKED)
RETURNING id, account_id, label, expires_at
"""

# For this transaction only: commit without waiting for the WAL flush.
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"

# last used: never moves backwards, whatever order usage events arrive in.
TOUCH_LAST_USED = """
UPDATE keys.api_keys k SET last_used_at = greatest(k.last_used_at, u.used_at)
FROM unnest($1::text[], $2::timestamptz[]) AS u(key_id, used_at)
WHERE k.id = u.key_id
"""

ALL_LIVE_KEY_IDS = "SELECT id FROM keys.api_keys WHERE status <> 'deleted' ORDER BY id"

# --- catalog ------------------------------------------------------------------------------------------------

CATALOG_STATE = "SELECT version, discount_ppm FROM keys.catalog_state WHERE id = 1"
CATALOG_STATE_FOR_UPDATE = CATALOG_STATE + " FOR UPDATE"
BUMP_CATALOG_VERSION = "UPDATE keys.catalog_state SET version = version + 1 WHERE id = 1 RETURNING version"
SET_DISCOUNT = "UPDATE keys.catalog_state SET discount_ppm = $1 WHERE id = 1"

CHANNEL_COLUMNS = (
    "id, name, provider, base_url, api_keys_enc, api_keys_mask, models, model_map, priority, weight, groups,"
    " status, cost_ratio_ppm, created_at, updated_at"
)
ALL_CHANNELS = f"SELECT {CHANNEL_COLUMNS} FROM keys.channels ORDER BY priority DESC, id"
CHANNEL_BY_ID = f"SELECT {CHANNEL_COLUMNS} FROM keys.channels WHERE id = $1"
CHANNEL_BY_ID_FOR_UPDATE = CHANNEL_BY_ID + " FOR UPDATE"
UPSERT_CHANNEL = """
INSERT INTO keys.channels (id, name, provider, base_url, api_keys_enc, api_keys_mask, models, model_map,
                           priority, weight, groups, status, cost_ratio_ppm)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (id) DO UPDATE SET name = $2, provider = $3, base_url = $4, api_keys_enc = $5, api_keys_mask = $6,
    models = $7, model_map = $8, priority = $9, weight = $10, groups = $11, status = $12,
    cost_ratio_ppm = $13, updated_at = now()
"""
INSERT_CHANNEL_IF_ABSENT = """
INSERT INTO keys.channels (id, name, provider, base_url, api_keys_enc, api_keys_mask, models, model_map,
                           priority, weight, groups, status, cost_ratio_ppm)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (id) DO NOTHING
"""
DELETE_CHANNEL = "DELETE FROM keys.channels WHERE id = $1"

MODEL_COLUMNS = (
    "name, provider, kind, context_window, max_output, price_input, price_output, price_cached_input,"
    " list_input, list_output, list_cached_input, fallbacks, image_price_micros"
)
ALL_MODELS = f"SELECT {MODEL_COLUMNS} FROM keys.models ORDER BY name"
MODEL_BY_NAME = f"SELECT {MODEL_COLUMNS} FROM keys.models WHERE name = $1"
UPSERT_MODEL = """
INSERT INTO keys.models (name, provider, kind, context_window, max_output, price_input, price_output,
                         price_cached_input, list_input, list_output, list_cached_input, fallbacks,
                         image_price_micros)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (name) DO UPDATE SET provider = $2, kind = $3, context_window = $4, max_output = $5,
    price_input = $6, price_output = $7, price_cached_input = $8, list_input = $9, list_output = $10,
    list_cached_input = $11, fallbacks = $12, image_price_micros = $13, updated_at = now()
"""
DELETE_MODEL = "DELETE FROM keys.models WHERE name = $1"

ALL_GROUPS = "SELECT name, ratio_ppm, models, selectable FROM keys.groups ORDER BY name"
GROUP_BY_NAME = "SELECT name, ratio_ppm, models, selectable FROM keys.groups WHERE name = $1"
UPSERT_GROUP = """
INSERT INTO keys.groups (name, ratio_ppm, models, selectable) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET ratio_ppm = $2, models = $3, selectable = $4
"""
DELETE_GROUP = "DELETE FROM keys.groups WHERE name = $1"
GROUP_IN_USE = """
SELECT EXISTS (SELECT 1 FROM keys.accounts WHERE "group" = $1)
    OR EXISTS (SELECT 1 FROM keys.api_keys WHERE "group" = $1 AND status <> 'deleted')
"""

# --- housekeeping -------------------------------------------------------------------------------------------

# Redeliveries stop when the stream forgets a message (7 days), so older claims can go.
PRUNE_PROCESSED = "DELETE FROM keys.processed_events WHERE processed_at < now() - make_interval(secs => $1)"
PRUNE_RESETS = "DELETE FROM keys.password_resets WHERE expires_at < now() - interval '1 day'"

# --- organisations (services/keys/orgs.py) ------------------------------------------------------------------

# The org's account row: no e-mail login (see migrations/0002_orgs.sql), so email_norm is 'org:<id>'.
INSERT_ORG_ACCOUNT = """
INSERT INTO keys.accounts (id, email, email_norm, password_hash, role, "group", kind)
VALUES ($1, '', 'org:' || $1, '!', 'user', $2, 'org')
"""
INSERT_ORG = """
INSERT INTO keys.orgs (id, name, default_allowance_micros, time_zone, created_by) VALUES ($1, $2, $3, $4, $5)
"""
ORG_COLUMNS = "o.id, o.name, o.default_allowance_micros, o.time_zone, o.created_by, o.created_at, a.status"
ORG_BY_ID = f"SELECT {ORG_COLUMNS} FROM keys.orgs o JOIN keys.accounts a ON a.id = o.id WHERE o.id = $1"
UPDATE_ORG = """
UPDATE keys.orgs SET name = $2, default_allowance_micros = $3, time_zone = $4, updated_at = now()
WHERE id = $1
"""
ORGS_OF_USER = f"""
SELECT {ORG_COLUMNS}, m.role FROM keys.org_members m
JOIN keys.orgs o ON o.id = m.org_id JOIN keys.accounts a ON a.id = o.id
WHERE m.user_id = $1 ORDER BY o.created_at, o.id
"""

MEMBER = """
SELECT org_id, user_id, role, allowance_micros, joined_at FROM keys.org_members
WHERE org_id = $1 AND user_id = $2
"""
MEMBERS = """
SELECT m.org_id, m.user_id, m.role, m.allowance_micros, m.joined_at, a.email
FROM keys.org_members m JOIN keys.accounts a ON a.id = m.user_id
WHERE m.org_id = $1 ORDER BY m.joined_at, m.user_id
"""
INSERT_MEMBER = """
INSERT INTO keys.org_members (org_id, user_id, role, allowance_micros) VALUES ($1, $2, $3, $4)
ON CONFLICT (org_id, user_id) DO NOTHING
RETURNING org_id
"""
UPDATE_MEMBER = """
UPDATE keys.org_members SET role = $3, allowance_micros = $4 WHERE org_id = $1 AND user_id = $2
"""
DELETE_MEMBER = "DELETE FROM keys.org_members WHERE org_id = $1 AND user_id = $2"
COUNT_OWNERS = "SELECT count(*) FROM keys.org_members WHERE org_id = $1 AND role = 'owner'"
# Serialises membership changes of one org (the last owner cannot be removed by two concurrent requests).
LOCK_ORG = "SELECT id FROM keys.orgs WHERE id = $1 FOR UPDATE"

INVITATION_COLUMNS = (
    "id, org_id, email_norm, role, allowance_micros, status, invited_by, answered_by, expires_at, created_at,"
    " answered_at"
)
INSERT_INVITATION = f"""
INSERT INTO keys.org_invitations (id, org_id, email_norm, role, allowance_micros, token_hash, invited_by,
                                  expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING {INVITATION_COLUMNS}
"""
INVITATIONS_OF_ORG = f"""
SELECT {INVITATION_COLUMNS} FROM keys.org_invitations WHERE org_id = $1 ORDER BY created_at DESC, id LIMIT 500
"""
INVITATION_BY_TOKEN_FOR_UPDATE = f"""
SELECT {INVITATION_COLUMNS} FROM keys.org_invitations WHERE token_hash = $1 FOR UPDATE
"""
INVITATION_BY_ID_FOR_UPDATE = f"""
SELECT {INVITATION_COLUMNS} FROM keys.org_invitations WHERE id = $1 AND org_id = $2 FOR UPDATE
"""
ANSWER_INVITATION = f"""
UPDATE keys.org_invitations SET status = $2, answered_by = $3, answered_at = now() WHERE id = $1
RETURNING {INVITATION_COLUMNS}
"""

INSERT_AUDIT = """
INSERT INTO keys.org_audit (org_id, actor_id, action, subject_id, detail) VALUES ($1, $2, $3, $4, $5::jsonb)
"""
# A credit to an organisation's wallet (nothing for a personal account's).
INSERT_WALLET_AUDIT = """
INSERT INTO keys.org_audit (org_id, actor_id, action, subject_id, detail, at)
SELECT o.id, 'billing', 'wallet.credited', $2, $3::jsonb, $4 FROM keys.orgs o WHERE o.id = $1
"""
AUDIT_OF_ORG = """
SELECT id, actor_id, action, subject_id, detail::text AS detail, at FROM keys.org_audit
WHERE org_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3
"""

ORG_KEYS = f"""
SELECT {KEY_COLUMNS} FROM {_KEYS_JOIN}
WHERE k.account_id = $1 AND ($2::text IS NULL OR k.user_id = $2) AND k.status <> 'deleted'
ORDER BY k.created_at DESC, k.id
"""
# Live keys of one member under an org ($2 NULL: every member's), to re-publish after an allowance or
# time-zone change.
ORG_KEY_IDS = """
SELECT id FROM keys.api_keys
WHERE account_id = $1 AND ($2::text IS NULL OR user_id = $2) AND status <> 'deleted'
"""
# A removed member's keys under the org stop at once (each is then re-published: snapshot + key.changed).
DISABLE_MEMBER_KEYS = """
UPDATE keys.api_keys SET status = 'disabled', updated_at = now()
WHERE account_id = $1 AND user_id = $2 AND status = 'active'
RETURNING id
"""
