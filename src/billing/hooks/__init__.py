"""After the send: the gateway's webhooks (receipts, replies, connection) applied to the event store, and
the signed webhooks to the ERP (``billing hooks``)."""
