-- Why a pending contact waits (the reason of its last Contact.Deferred: rate_limited,
-- daily_limit_reached, outside_business_hours, gateway_disconnected, ...); null once it moved on.
ALTER TABLE campaign_contacts ADD COLUMN IF NOT EXISTS deferred_reason text;
