-- Read models of the tenant dashboard and of template choice. Applied by `billing migrate` (idempotent).
-- Written only by the projections process (in the transaction of its tracking record), except
-- api_key_usage, which the API writes (last use of a key is not a domain event).

-- The default template of each type (Tenant.DefaultTemplateChosen).
CREATE TABLE IF NOT EXISTS default_templates (
    tenant_id     uuid NOT NULL,
    template_type text NOT NULL,
    template_id   uuid NOT NULL,
    chosen_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, template_type)
);

-- Contacts reaching an outcome, per tenant, UTC hour and outcome; the overview sums at most
-- 24 x 30 x 5 rows per tenant instead of counting its contacts.
CREATE TABLE IF NOT EXISTS outcome_counts (
    tenant_id uuid NOT NULL,
    hour      timestamptz NOT NULL,   -- date_trunc('hour', event time) in UTC
    outcome   text NOT NULL,          -- sent, failed, skipped, rejected, cancelled
    n         bigint NOT NULL,
    PRIMARY KEY (tenant_id, hour, outcome)
);

-- Dashboard users (User aggregate).
CREATE TABLE IF NOT EXISTS users (
    user_id    uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    email      text NOT NULL,
    role       text NOT NULL,
    created_at timestamptz NOT NULL,
    removed_at timestamptz
);
CREATE INDEX IF NOT EXISTS users_tenant ON users (tenant_id, email);

-- What admins did in the dashboard (AdminAction aggregate): who, what, when.
CREATE TABLE IF NOT EXISTS admin_actions (
    action_id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    user_id   uuid NOT NULL,
    email     text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL,
    at        timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS admin_actions_tenant ON admin_actions (tenant_id, at DESC);

-- Last use of each API key; written by the API at most once a minute per key and process.
CREATE TABLE IF NOT EXISTS api_key_usage (
    key_id     uuid PRIMARY KEY,
    last_used  timestamptz NOT NULL
);

-- History search by phone.
CREATE INDEX IF NOT EXISTS campaign_contacts_tenant_phone ON campaign_contacts (tenant_id, phone);
