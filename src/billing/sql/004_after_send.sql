-- After the send: receipts, replies, opt-outs, ERP webhooks, WhatsApp account lookups.
-- Applied by `billing migrate` (idempotent).

-- Read models (written by the projections process; rebuilt from the events by `projections rebuild`).
ALTER TABLE campaign_contacts ADD COLUMN IF NOT EXISTS jid_asked text;
ALTER TABLE campaign_contacts ADD COLUMN IF NOT EXISTS delivered_at timestamptz;
ALTER TABLE campaign_contacts ADD COLUMN IF NOT EXISTS read_at timestamptz;
ALTER TABLE campaign_contacts ADD COLUMN IF NOT EXISTS replied_at timestamptz;
-- deferred_reason (003): a pause reason makes the contact due as soon as its queue resumes
CREATE INDEX IF NOT EXISTS campaign_contacts_waiting_pause
    ON campaign_contacts (queue_id) WHERE status = 'pending' AND deferred_reason IS NOT NULL;
CREATE INDEX IF NOT EXISTS campaign_contacts_remote_jid
    ON campaign_contacts (tenant_id, remote_jid, sent_at DESC) WHERE remote_jid IS NOT NULL;
ALTER TABLE queue_status ADD COLUMN IF NOT EXISTS delivered integer NOT NULL DEFAULT 0;
ALTER TABLE queue_status ADD COLUMN IF NOT EXISTS read integer NOT NULL DEFAULT 0;
ALTER TABLE queue_status ADD COLUMN IF NOT EXISTS replied integer NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS opt_outs (
    conversation_id uuid NOT NULL UNIQUE,    -- the Conversation aggregate
    tenant_id    uuid NOT NULL,
    phone        text NOT NULL,             -- E.164
    opted_out    boolean NOT NULL,
    opted_out_at timestamptz,
    message_id   text,                      -- the reply that caused it
    stop_word    text,
    contact_id   uuid,                      -- the reminder it answered
    lifted_at    timestamptz,
    lifted_by    text,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, phone)
);

-- Operational tables (not rebuilt from events).

-- What the gateway's webhooks told us, kept until applied to the event store. A receipt whose message
-- id is not (yet) known waits here: it may arrive before the send's answer was saved and projected.
CREATE TABLE IF NOT EXISTS gateway_inbox (
    id           bigserial PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    kind         text NOT NULL,             -- 'receipt' | 'reply'
    message_id   text NOT NULL,             -- key.id
    status       text NOT NULL DEFAULT '',  -- receipts: DELIVERY_ACK, READ, ...
    remote_jid   text,
    body         text,                      -- replies: the text
    reported_at  timestamptz,
    received_at  timestamptz NOT NULL,
    applied_at   timestamptz,
    outcome      text,
    UNIQUE (tenant_id, kind, message_id, status)
);
CREATE INDEX IF NOT EXISTS gateway_inbox_open ON gateway_inbox (received_at) WHERE applied_at IS NULL;

-- Answers of /chat/whatsappNumbers per tenant and phone (jid NULL: no account), with when asked.
CREATE TABLE IF NOT EXISTS whatsapp_accounts (
    tenant_id   uuid NOT NULL,
    phone       text NOT NULL,              -- E.164
    jid         text,
    checked_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, phone)
);

-- Webhook deliveries to the ERP: one row per (event, endpoint); payload kept byte for byte so every
-- retry signs the same body. Written by the ERP outbox follower in the transaction of its position.
CREATE TABLE IF NOT EXISTS erp_deliveries (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL,
    endpoint_id     text NOT NULL,
    tenant_id       uuid NOT NULL,
    event_type      text NOT NULL,
    payload         text NOT NULL,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz,            -- NULL once delivered or given up
    attempts        integer NOT NULL DEFAULT 0,
    state           text NOT NULL DEFAULT 'pending',  -- pending | delivered | given_up | dropped
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX IF NOT EXISTS erp_deliveries_due ON erp_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS erp_deliveries_tenant ON erp_deliveries (tenant_id, created_at DESC);

CREATE TABLE IF NOT EXISTS erp_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL,
    status_code  integer,
    error        text,
    duration_ms  integer NOT NULL
);
CREATE INDEX IF NOT EXISTS erp_attempts_delivery ON erp_attempts (delivery_id, attempt);

-- Queues whose completion was already turned into queue.completed deliveries.
CREATE TABLE IF NOT EXISTS erp_completed_queues (
    queue_id    uuid PRIMARY KEY,
    seen_at     timestamptz NOT NULL DEFAULT now()
);

-- Capped (dunning) messages claimed per tenant and phone: the per-debtor cap counts today's rows under
-- pg_advisory_xact_lock(class, hashtext(tenant:phone)), so workers deciding at once are serialised.
CREATE TABLE IF NOT EXISTS debtor_sends (
    contact_id  uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    phone       text NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS debtor_sends_phone ON debtor_sends (tenant_id, phone, at);
