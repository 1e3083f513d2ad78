-- The usage service: one request-log row per request (partitioned by month, so retention drops whole partitions),
-- hourly and daily aggregates per account/key/model (kept forever), and the last known wallet balance.
-- Metadata only: no prompt or completion text has a column here.

CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_age ON processed_events (processed_at);

CREATE TABLE request_log (
    ts                   timestamptz NOT NULL,  -- when the request ended (usage.recorded occurred_at), UTC
    request_id           text        NOT NULL,
    account_id           text        NOT NULL,
    user_id              text        NOT NULL DEFAULT '',
    key_id               text        NOT NULL,
    model                text        NOT NULL,
    upstream_model       text        NOT NULL DEFAULT '',
    channel_id           text        NOT NULL DEFAULT '',
    dialect              text        NOT NULL DEFAULT '',
    endpoint             text        NOT NULL DEFAULT '',
    stream               boolean     NOT NULL DEFAULT false,
    status               int         NOT NULL,
    error_code           text        NOT NULL DEFAULT '',
    prompt_tokens        bigint      NOT NULL DEFAULT 0,
    completion_tokens    bigint      NOT NULL DEFAULT 0,
    cached_tokens        bigint      NOT NULL DEFAULT 0,
    cost_micros          bigint      NOT NULL DEFAULT 0,  -- what the wallet paid (usage.charged), 0 until charged
    upstream_cost_micros bigint      NOT NULL DEFAULT 0,  -- what the upstream charged the operator
    charged_at           timestamptz,                     -- set once, when usage.charged is applied
    latency_ms           int         NOT NULL DEFAULT 0,
    ttft_ms              int         NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, ts)
) PARTITION BY RANGE (ts);

-- The log pages newest first, per account (users) or across all (admins).
CREATE INDEX request_log_account_ts ON request_log (account_id, ts DESC, request_id DESC);
CREATE INDEX request_log_ts ON request_log (ts DESC, request_id DESC);

-- A usage.charged that arrives before its usage.recorded waits here until the row exists.
CREATE TABLE pending_charges (
    request_id           text        PRIMARY KEY,
    amount_micros        bigint      NOT NULL,
    upstream_cost_micros bigint      NOT NULL,
    charged_at           timestamptz NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE usage_hourly (
    account_id        text        NOT NULL,
    hour              timestamptz NOT NULL,  -- UTC hour start
    key_id            text        NOT NULL,
    model             text        NOT NULL,
    requests          bigint      NOT NULL DEFAULT 0,
    errors            bigint      NOT NULL DEFAULT 0,
    prompt_tokens     bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint      NOT NULL DEFAULT 0,
    cached_tokens     bigint      NOT NULL DEFAULT 0,
    cost_micros       bigint      NOT NULL DEFAULT 0,
    latency_ms_sum    bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, hour, key_id, model)
);
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);

CREATE TABLE usage_daily (
    account_id        text   NOT NULL,
    day               date   NOT NULL,  -- UTC day
    key_id            text   NOT NULL,
    model             text   NOT NULL,
    requests          bigint NOT NULL DEFAULT 0,
    errors            bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens     bigint NOT NULL DEFAULT 0,
    cost_micros       bigint NOT NULL DEFAULT 0,
    latency_ms_sum    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day, key_id, model)
);
CREATE INDEX usage_daily_day ON usage_daily (day);

-- The wallet balance as of the newest billing event seen (usage.charged, wallet.credited).
CREATE TABLE account_balance (
    account_id     text        PRIMARY KEY,
    balance_micros bigint      NOT NULL,
    as_of          timestamptz NOT NULL
);

-- Partition DDL needs identifiers, so it lives in functions the service calls with plain parameters.
CREATE FUNCTION ensure_log_partition(month_start date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lo date := date_trunc('month', month_start)::date;
    name text := format('request_log_p%s', to_char(lo, 'YYYYMM'));
BEGIN
    IF to_regclass(format('usage.%I', name)) IS NULL THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS usage.%I PARTITION OF usage.request_log '
                       'FOR VALUES FROM (%L) TO (%L)',
                       name, lo::timestamp AT TIME ZONE 'UTC', (lo + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    END IF;
    RETURN name;
END $$;

-- Drop every month partition whose whole range ends at or before `cutoff`; returns the dropped names.
CREATE FUNCTION drop_log_partitions_before(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    upper_bound timestamptz;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace n ON n.oid = p.relnamespace
        WHERE n.nspname = 'usage' AND p.relname = 'request_log' AND c.relname ~ '^request_log_p[0-9]{6}$'
        ORDER BY c.relname
    LOOP
        upper_bound := (to_date(substr(part.relname, 14), 'YYYYMM') + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        IF upper_bound <= cutoff THEN
            EXECUTE format('DROP TABLE usage.%I', part.relname);
            RETURN NEXT part.relname;
        END IF;
    END LOOP;
END $$;
