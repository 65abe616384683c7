"""The ApiKey aggregate: a tenant's key for the public API, stored only as a hash (DESIGN.md promise 8).

The key's identity is derived from its hash (:func:`api_key_id`), so the public API authenticates a
request by one read of the event store, with no lookup table to keep in step.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

API_KEY_NAMESPACE = UUID("5b1f2d0e-7c1a-4a8e-9a51-6f0f3c6b2a10")


@lru_cache(maxsize=4096)  # every public request derives it: the keys in use stay cached
def api_key_id(key_hash: str) -> UUID:
    """The aggregate id of the key whose SHA-256 hex digest is ``key_hash`` (UUID v5, RFC 4122)."""
    return uuid5(API_KEY_NAMESPACE, key_hash)


class ApiKey(Aggregate):
    """A tenant's API key: name, display prefix (first characters of the key) and SHA-256 hash."""

    TOPIC = "billing.ApiKey"

    if TYPE_CHECKING:  # the library builds __init__ from class annotations; keep these for mypy only
        tenant_id: UUID
        name: str
        prefix: str
        key_hash: str
        revoked: bool
        created_at: datetime

    class Created(Aggregate.Created):
        """Base of the creation event; never recorded itself."""

        TOPIC = "billing.ApiKey.Created"

    class Issued(Created):
        """The key was issued (its clear text was shown once and never stored)."""

        TOPIC = "billing.ApiKey.Issued"
        tenant_id: UUID
        name: str
        prefix: str
        key_hash: str

        def apply(self, aggregate: ApiKey) -> None:
            aggregate.tenant_id = self.tenant_id
            aggregate.name = self.name
            aggregate.prefix = self.prefix
            aggregate.key_hash = self.key_hash
            aggregate.revoked = False
            aggregate.created_at = self.timestamp

    class Revoked(Aggregate.Event):
        """The key no longer authenticates."""

        TOPIC = "billing.ApiKey.Revoked"

        def apply(self, aggregate: ApiKey) -> None:
            aggregate.revoked = True

    @classmethod
    def issue(cls, *, tenant_id: UUID, name: str, prefix: str, key_hash: str, at: datetime) -> ApiKey:
        """Issue a key from its SHA-256 hex digest (the caller generated the key and shows it once)."""
        return cls._create(
            cls.Issued,
            id=api_key_id(key_hash),
            tenant_id=tenant_id,
            name=name,
            prefix=prefix,
            key_hash=key_hash,
            timestamp=at,
        )

    def revoke(self, *, at: datetime) -> None:
        """Revoke the key; revoking twice records nothing."""
        if not self.revoked:
            self.trigger_event(self.Revoked, timestamp=at)
