-- Operational tables of the worker (not read models: written by the worker, never rebuilt from events).
-- Applied by `billing migrate` (idempotent).

-- Every send the throttle granted (one row per gateway attempt), per tenant. Rows are inserted under
-- pg_advisory_xact_lock(<tenant key>) by the process that decided, in the same transaction as the
-- decision, so any number of worker processes share one sliding 60 s window and one daily count
-- (DESIGN.md promise 5). sent_at comes from the worker's clock.
CREATE TABLE IF NOT EXISTS send_ledger (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    sent_at     timestamptz NOT NULL,
    contact_id  uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS send_ledger_tenant_time ON send_ledger (tenant_id, sent_at);

-- A tenant whose gateway answered 401/403/404 (misconfigured) for gateway generation `generation`
-- (Tenant.gateway_generation). Sending stays blocked, and its queues paused with gateway_misconfigured,
-- until the tenant's generation moves past it (an admin changed the gateway settings).
CREATE TABLE IF NOT EXISTS gateway_blocks (
    tenant_id   uuid PRIMARY KEY,
    generation  integer NOT NULL,
    code        text NOT NULL,
    blocked_at  timestamptz NOT NULL
);
