-- Organisations. An organisation is an account of kind 'org': it owns a wallet (billing keys wallets by account
-- id) and keys (api_keys.account_id = the org, user_id = the member who holds the key). It has no e-mail login:
-- its email_norm is 'org:<id>', which no login can match (log-ins need an e-mail address), and no password.

ALTER TABLE accounts ADD COLUMN kind text NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'org'));

CREATE TABLE orgs (
    id                       text PRIMARY KEY REFERENCES accounts (id),
    name                     text NOT NULL,
    default_allowance_micros bigint NOT NULL DEFAULT 0 CHECK (default_allowance_micros >= 0), -- 0 = none
    time_zone                text NOT NULL DEFAULT 'UTC',  -- IANA name; the allowance month starts here
    created_by               text NOT NULL REFERENCES accounts (id),
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE org_members (
    org_id           text NOT NULL REFERENCES orgs (id),
    user_id          text NOT NULL REFERENCES accounts (id),
    role             text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    allowance_micros bigint NOT NULL DEFAULT 0 CHECK (allowance_micros >= 0),  -- per month; 0 = none
    joined_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX org_members_user ON org_members (user_id);

-- Invitations: by e-mail (email set; only that address may accept) or by link (email empty: whoever holds it).
-- The token in the link is stored only as its sha256.
CREATE TABLE org_invitations (
    id               text PRIMARY KEY,
    org_id           text NOT NULL REFERENCES orgs (id),
    email_norm       text NOT NULL DEFAULT '',
    role             text NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    allowance_micros bigint,                       -- NULL: the org's default at acceptance
    token_hash       text NOT NULL UNIQUE,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'accepted', 'declined', 'revoked')),
    invited_by       text NOT NULL REFERENCES accounts (id),
    answered_by      text REFERENCES accounts (id),
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    answered_at      timestamptz
);
CREATE INDEX org_invitations_org ON org_invitations (org_id, created_at DESC);

-- Who did what to an organisation's membership, roles, allowances and settings, and when.
CREATE TABLE org_audit (
    id         bigserial PRIMARY KEY,
    org_id     text NOT NULL REFERENCES orgs (id),
    actor_id   text NOT NULL,
    action     text NOT NULL,                      -- e.g. org.created, member.role_changed
    subject_id text NOT NULL DEFAULT '',           -- the member, invitation or key acted on
    detail     jsonb NOT NULL DEFAULT '{}',
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX org_audit_org ON org_audit (org_id, id DESC);
