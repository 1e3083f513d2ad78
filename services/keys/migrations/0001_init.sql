-- Accounts, sessions, API keys (hashes only) and the catalog. Schema `keys` (set by the migration runner).

CREATE TABLE accounts (
    id            text PRIMARY KEY,
    email         text NOT NULL,
    email_norm    text NOT NULL UNIQUE,          -- lower-cased, trimmed: the login name
    password_hash text NOT NULL,                 -- argon2id
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    "group"       text NOT NULL DEFAULT 'default',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    token_hash   text PRIMARY KEY,               -- sha256 of the cookie value; the value itself is never stored
    account_id   text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    client_ip    text NOT NULL DEFAULT ''
);
CREATE INDEX sessions_account ON sessions (account_id);

CREATE TABLE password_resets (
    token_hash text PRIMARY KEY,                 -- sha256 of the token in the e-mailed link
    account_id text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id                  text PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts (id),
    user_id             text NOT NULL,
    key_hash            text NOT NULL UNIQUE,    -- sha256 hex of the current secret
    prefix              text NOT NULL,           -- the first characters of the secret, for recognition
    label               text NOT NULL,
    "group"             text NOT NULL DEFAULT 'default',
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'deleted')),
    quota_micros        bigint NOT NULL DEFAULT 0 CHECK (quota_micros >= 0),
    models              text[] NOT NULL DEFAULT '{}',
    ip_allow            text[] NOT NULL DEFAULT '{}',
    expires_at          timestamptz,
    rpm_limit           integer NOT NULL DEFAULT 0,
    tpm_limit           integer NOT NULL DEFAULT 0,
    concurrency_limit   integer NOT NULL DEFAULT 100,
    last_used_at        timestamptz,
    expiry_notified_for timestamptz,             -- the expires_at a key.expiring was published for
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id) WHERE status <> 'deleted';
CREATE INDEX api_keys_expiry ON api_keys (expires_at) WHERE status = 'active' AND expires_at IS NOT NULL;

-- A rotated-out secret: valid until grace_until, then refused (retired_at set once gateways were told).
CREATE TABLE retired_key_hashes (
    key_hash    text PRIMARY KEY,
    key_id      text NOT NULL REFERENCES api_keys (id),
    grace_until timestamptz NOT NULL,
    retired_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retired_key_hashes_pending ON retired_key_hashes (grace_until) WHERE retired_at IS NULL;

-- The catalog. Each edit bumps catalog_state.version in the same transaction.
CREATE TABLE catalog_state (
    id           integer PRIMARY KEY CHECK (id = 1),
    version      bigint NOT NULL DEFAULT 0,
    discount_ppm bigint NOT NULL DEFAULT 0 CHECK (discount_ppm >= 0 AND discount_ppm <= 1000000)
);
INSERT INTO catalog_state (id) VALUES (1);

CREATE TABLE channels (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    provider       text NOT NULL CHECK (provider IN ('openai', 'anthropic', 'gemini')),
    base_url       text NOT NULL,
    api_keys_enc   text[] NOT NULL DEFAULT '{}', -- sealed with shared.crypto
    api_keys_mask  text[] NOT NULL DEFAULT '{}', -- what the API shows instead (e.g. "sk-a…wxyz")
    models         text[] NOT NULL DEFAULT '{}',
    model_map      jsonb NOT NULL DEFAULT '{}',
    priority       integer NOT NULL DEFAULT 0,
    weight         integer NOT NULL DEFAULT 1,
    groups         text[] NOT NULL DEFAULT '{}',
    status         text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    cost_ratio_ppm bigint NOT NULL DEFAULT 1000000,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models (
    name                 text PRIMARY KEY,
    provider             text NOT NULL,
    kind                 text NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'embedding', 'image')),
    context_window       integer NOT NULL DEFAULT 128000,
    max_output           integer NOT NULL DEFAULT 8192,
    price_input          bigint NOT NULL,        -- micro-USD per million tokens
    price_output         bigint NOT NULL,
    price_cached_input   bigint NOT NULL DEFAULT 0,
    list_input           bigint,                 -- the upstream's public price; NULL = same as price
    list_output          bigint,
    list_cached_input    bigint,
    fallbacks            text[] NOT NULL DEFAULT '{}',
    image_price_micros   bigint NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE groups (
    name       text PRIMARY KEY,
    ratio_ppm  bigint NOT NULL DEFAULT 1000000 CHECK (ratio_ppm >= 0),
    models     text[] NOT NULL DEFAULT '{}',
    selectable boolean NOT NULL DEFAULT false  -- users may put their own keys in it (else admins only)
);
INSERT INTO groups (name, selectable) VALUES ('default', true);

CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
