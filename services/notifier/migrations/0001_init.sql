-- The notifier's own data: who to write to, how each account wants to hear, and the outbox of every
-- notification an event caused (sent exactly once by the sender loops).

CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- account_id -> e-mail address, fed by account.registered (and the address a password reset was asked for).
CREATE TABLE recipients (
    account_id text PRIMARY KEY,
    email      text NOT NULL,
    -- occurred_at of the event that set it, so an older event arriving late never overwrites a newer address.
    as_of      timestamptz NOT NULL
);

-- Per-account preferences; no row = defaults (every alert by e-mail to the registered address, no webhook).
CREATE TABLE preferences (
    account_id      text PRIMARY KEY,
    email           text,                      -- overrides the registered address when set
    email_alerts    text[] NOT NULL,           -- alert kinds sent by e-mail (receipt, low_balance, key_expiring)
    webhook_url     text,
    webhook_secret  text,                      -- sealed with shared.crypto.seal; shown to the owner once
    webhook_alerts  text[] NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    -- What caused it: the event id, or for key.expiring "key.expiring:<key_id>:<expires_at>" (once per expiry).
    dedupe_key      text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('email', 'webhook')),
    -- account:<id> (address/URL resolved at send time), address:<email> (fixed) or admin:<email>/admin:webhook.
    recipient       text NOT NULL,
    account_id      text,                      -- the owner who may see this delivery through the API
    kind            text NOT NULL,             -- template / alert name, e.g. topup_receipt
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,            -- template variables and webhook data: metadata only
    sealed          text,                      -- sealed secret variables (a reset link); cleared once done
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,               -- lease of the sender working on it
    claim_token     text,
    last_error      text,
    destination     text,                      -- the address or URL it last went to
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    UNIQUE (dedupe_key, channel, recipient)
);

CREATE INDEX outbox_due ON outbox (channel, next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_owner ON outbox (account_id, created_at DESC);
