"""The pure domain: aggregates, domain events and policies. No I/O, no clock reads."""
