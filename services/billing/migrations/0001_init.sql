-- The billing schema: an append-only ledger per account and the projections folded from it.

-- Every change to a wallet's balance, in order. Never updated or deleted. (account_id, seq) is the optimistic-
-- concurrency key: a writer that lost a race fails on the primary key instead of forking the balance chain.
CREATE TABLE ledger (
    account_id     text        NOT NULL,
    seq            bigint      NOT NULL,
    kind           text        NOT NULL,  -- usage | topup | code | plan | refund | adjustment | seed
    amount_micros  bigint      NOT NULL,  -- signed change to the wallet balance
    balance_after  bigint      NOT NULL,
    event_id       text        NOT NULL UNIQUE,  -- usage: the usage event id; others: a deterministic id
    request_id     text        NOT NULL DEFAULT '',
    reference      text        NOT NULL DEFAULT '',  -- payment, code batch, plan grant, refunded event...
    reason         text        NOT NULL DEFAULT '',
    key_id         text        NOT NULL DEFAULT '',
    model          text        NOT NULL DEFAULT '',
    channel_id     text        NOT NULL DEFAULT '',
    price_micros   bigint      NOT NULL DEFAULT 0,  -- usage: the full sell price (wallet part + plan part)
    plan_micros    bigint      NOT NULL DEFAULT 0,  -- usage: the part plans paid
    cost_micros    bigint      NOT NULL DEFAULT 0,  -- usage: what the upstream charges the operator
    bonus_micros   bigint      NOT NULL DEFAULT 0,  -- topup: bonus included in amount_micros
    paid_micros    bigint      NOT NULL DEFAULT 0,  -- topup/plan: money paid
    occurred_at    timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, seq)
);
CREATE INDEX ledger_request ON ledger (request_id) WHERE request_id <> '';
CREATE INDEX ledger_model ON ledger (model, occurred_at) WHERE kind = 'usage';
CREATE INDEX ledger_channel ON ledger (channel_id, occurred_at) WHERE kind = 'usage';

-- Projection: the balance after the last ledger row. `version` grows on every change of what the wallet may
-- spend (ledger rows, plan use, plan expiry); Redis keeps the version it holds, so a late writer never
-- overwrites a newer balance.
CREATE TABLE wallets (
    account_id            text        PRIMARY KEY,
    balance_micros        bigint      NOT NULL DEFAULT 0,
    seq                   bigint      NOT NULL DEFAULT 0,
    version               bigint      NOT NULL DEFAULT 0,
    low_threshold_micros  bigint,     -- NULL: the service default
    low_state             smallint    NOT NULL DEFAULT 0,  -- 0 fine, 1 below threshold, 2 exhausted
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Plans for sale.
CREATE TABLE plans (
    plan_id        text        PRIMARY KEY,
    name           text        NOT NULL,
    price_micros   bigint      NOT NULL CHECK (price_micros >= 0),
    credit_micros  bigint      NOT NULL CHECK (credit_micros > 0),
    validity_days  int         NOT NULL CHECK (validity_days > 0),
    models         text[]      NOT NULL DEFAULT '{}',  -- empty: any model
    active         boolean     NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Plans held: the grant is a fact (credit, expiry); remaining_micros is a projection of plan_debits.
CREATE TABLE plan_grants (
    grant_id          text        PRIMARY KEY,
    account_id        text        NOT NULL,
    plan_id           text        NOT NULL,
    plan_name         text        NOT NULL,
    credit_micros     bigint      NOT NULL,
    remaining_micros  bigint      NOT NULL,
    models            text[]      NOT NULL DEFAULT '{}',
    expires_at        timestamptz NOT NULL,
    paid_micros       bigint      NOT NULL DEFAULT 0,
    reference         text        NOT NULL DEFAULT '',  -- the ledger event or payment that bought it
    expiry_synced     boolean     NOT NULL DEFAULT false,  -- its expiry was taken out of the Redis balance
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX plan_grants_account ON plan_grants (account_id, expires_at);
CREATE UNIQUE INDEX plan_grants_reference ON plan_grants (reference) WHERE reference <> '';

-- Append-only: what each usage event took from each plan.
CREATE TABLE plan_debits (
    grant_id       text    NOT NULL,
    event_id       text    NOT NULL,
    amount_micros  bigint  NOT NULL,
    PRIMARY KEY (grant_id, event_id)
);

-- Projection: what billing has charged against each key (the spend guard's quota `used`).
CREATE TABLE key_usage (
    key_id       text   PRIMARY KEY,
    used_micros  bigint NOT NULL DEFAULT 0
);

-- Top-ups and plan purchases paid through a provider.
CREATE TABLE payments (
    payment_id     text        PRIMARY KEY,
    account_id     text        NOT NULL,
    provider       text        NOT NULL,
    provider_ref   text        NOT NULL DEFAULT '',
    purpose        text        NOT NULL,  -- topup | plan
    plan_id        text,
    amount_micros  bigint      NOT NULL,  -- what the user pays
    bonus_micros   bigint      NOT NULL DEFAULT 0,
    status         text        NOT NULL DEFAULT 'pending',  -- pending | paid | failed
    checkout_url   text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    paid_at        timestamptz
);
CREATE INDEX payments_account ON payments (account_id, created_at DESC);

-- Redemption codes; only a sha256 of each code is kept (it is shown once, when generated).
CREATE TABLE codes (
    code_hash      text        PRIMARY KEY,
    batch_id       text        NOT NULL,
    amount_micros  bigint      NOT NULL CHECK (amount_micros > 0),
    expires_at     timestamptz NOT NULL,
    redeemed_by    text,
    redeemed_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Run-time options set by admins (e.g. bonus_tiers as JSON); a missing option means the configured default.
CREATE TABLE options (
    name        text        PRIMARY KEY,
    value       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Usage events that were well-formed JSON but not chargeable (negative tokens...): kept for the operator.
CREATE TABLE rejected_events (
    event_id     text        PRIMARY KEY,
    reason       text        NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE processed_events (
    consumer      text        NOT NULL,
    event_id      text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
