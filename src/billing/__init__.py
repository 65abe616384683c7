"""billing: multi-tenant WhatsApp dunning service (event-sourced)."""
