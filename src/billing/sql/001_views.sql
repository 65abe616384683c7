-- Read models (projections) and process positions. Applied by `billing migrate` (idempotent).
-- Every view is written only by the projections process, in the same transaction as its tracking record.

CREATE TABLE IF NOT EXISTS tracking (
    name        text PRIMARY KEY,          -- 'projections', 'relay', ...
    position    bigint NOT NULL DEFAULT 0, -- last notification id applied / published
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS projection_errors (
    id              bigserial PRIMARY KEY,
    projection      text NOT NULL,
    notification_id bigint NOT NULL,
    topic           text NOT NULL,
    error           text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS tenants (
    tenant_id   uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS api_keys (
    key_id      uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    name        text NOT NULL,
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant_id, created_at);

CREATE TABLE IF NOT EXISTS templates (
    template_id   uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    name          text NOT NULL,
    template_type text NOT NULL,
    description   text NOT NULL,
    variations    jsonb NOT NULL,        -- ["text", ...] in order
    active        boolean NOT NULL,
    version       integer NOT NULL,      -- the aggregate version of these values
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_tenant_type ON templates (tenant_id, template_type) WHERE active;

CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id   uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    queue_id      uuid NOT NULL,
    template_type text NOT NULL,
    external_id   text,
    accepted      integer NOT NULL,
    rejected      integer NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS campaigns_tenant ON campaigns (tenant_id, created_at DESC);

CREATE TABLE IF NOT EXISTS queue_status (
    queue_id      uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    campaign_id   uuid NOT NULL,
    template_type text NOT NULL,
    total         integer NOT NULL,
    pending       integer NOT NULL DEFAULT 0,   -- includes dispatched (in flight) and waiting retries
    sent          integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    skipped       integer NOT NULL DEFAULT 0,
    rejected      integer NOT NULL DEFAULT 0,
    cancelled     integer NOT NULL DEFAULT 0,
    paused_reason text,
    resume_at     timestamptz,
    cancelled_at  timestamptz,
    created_at    timestamptz NOT NULL,
    started_at    timestamptz,
    completed_at  timestamptz,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_status_tenant ON queue_status (tenant_id, created_at DESC);
CREATE INDEX IF NOT EXISTS queue_status_paused ON queue_status (resume_at) WHERE paused_reason IS NOT NULL;

CREATE TABLE IF NOT EXISTS campaign_contacts (
    contact_id         uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL,
    campaign_id        uuid NOT NULL,
    queue_id           uuid NOT NULL,
    idx                integer NOT NULL,     -- position in the request
    template_type      text NOT NULL,
    external_id        text,
    nome               text,
    telefone           text,                 -- as sent
    phone              text,                 -- E.164
    status             text NOT NULL,
    attempts           integer NOT NULL DEFAULT 0,
    message_text       text,
    gateway_message_id text,
    remote_jid         text,
    template_id        uuid,
    template_version   integer,
    variation          integer,
    sent_at            timestamptz,
    error_code         text,
    error_message      text,
    not_before         timestamptz,          -- pending: not to be sent before (retry, business hours)
    lease_until        timestamptz,          -- dispatched: the worker's claim expires then
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    UNIQUE (campaign_id, idx)
);
CREATE INDEX IF NOT EXISTS campaign_contacts_queue_status ON campaign_contacts (queue_id, status);
CREATE INDEX IF NOT EXISTS campaign_contacts_open_by_external
    ON campaign_contacts (tenant_id, external_id) WHERE status IN ('pending', 'dispatched');
CREATE INDEX IF NOT EXISTS campaign_contacts_due
    ON campaign_contacts (not_before) WHERE status = 'pending' AND not_before IS NOT NULL;
CREATE INDEX IF NOT EXISTS campaign_contacts_leases
    ON campaign_contacts (lease_until) WHERE status = 'dispatched';
CREATE INDEX IF NOT EXISTS campaign_contacts_gateway_message
    ON campaign_contacts (gateway_message_id) WHERE gateway_message_id IS NOT NULL;
