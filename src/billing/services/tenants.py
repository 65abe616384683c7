"""Tenant use cases: register a tenant (with default templates), issue / revoke / check API keys,
change the gateway and the sending policy."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID, uuid4

from billing.domain.apikey import ApiKey, api_key_id
from billing.domain.default_templates import DEFAULT_TEMPLATES
from billing.domain.errors import InvalidValue, NotFound
from billing.domain.policy import default_policy_spec
from billing.domain.template import MessageTemplate
from billing.domain.tenant import Tenant
from billing.eventstore import EventStore, get_owned, load_many
from billing.services.clock import Clock

KEY_PREFIX = "bk_"
AUTH_CACHE_TTL_S = 10.0


def hash_api_key(key: str) -> str:
    """SHA-256 hex digest of an API key (keys are 256-bit random, so a fast hash is right; no salt needed)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> str:
    """A new API key: ``bk_`` + 43 URL-safe characters (256 random bits, ``secrets``)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class TenantService:
    """Use cases on Tenant and ApiKey aggregates. Synchronous (the event store is)."""

    def __init__(
        self, store: EventStore, clock: Clock, *, gateway_url_guard: Callable[[str], None] | None = None
    ) -> None:
        """``gateway_url_guard``: the save-time SSRF check of a gateway base URL (raises
        ``billing.netguard.UnsafeAddressError``; the composition root passes
        :meth:`~billing.bootstrap.Container.check_gateway_url`); None: no check."""
        self.store = store
        self.clock = clock
        self._gateway_url_guard = gateway_url_guard
        self._auth_cache: dict[str, tuple[float, UUID | None]] = {}
        self._auth_generation = 0  # bumped by revocations, so a lookup racing one never re-caches
        self._lock = threading.Lock()

    def create_tenant(
        self,
        *,
        name: str,
        gateway: dict[str, Any],
        policy: dict[str, Any] | None = None,
        tenant_id: UUID | None = None,
    ) -> UUID:
        """Register a tenant with the default pt-BR templates of the three types (each its type's
        default), in one save.

        Raises:
            InvalidValue / PolicyError naming the field.
        """
        self._guard_gateway(gateway)
        now = self.clock.now()
        tenant = Tenant.register(
            tenant_id=tenant_id or uuid4(),
            name=name,
            gateway=gateway,
            policy=policy if policy is not None else default_policy_spec(),
            at=now,
        )
        templates = [
            MessageTemplate.create(
                template_id=uuid4(),
                tenant_id=tenant.id,
                name=tname,
                template_type=ttype.value,
                description=description,
                variations=variations,
                active=True,
                at=now,
            )
            for ttype, (tname, description, variations) in DEFAULT_TEMPLATES.items()
        ]
        for template in templates:  # each type's built-in template is its default until the admin chooses
            tenant.choose_default_template(
                template_id=template.id,
                template_tenant=tenant.id,
                template_type=template.template_type,
                active=True,
                at=now,
            )
        self.store.save(tenant, *templates)
        return tenant.id

    def get_tenant(self, tenant_id: UUID) -> Tenant:
        """The tenant. Raises NotFound."""
        tenant = get_owned(self.store, tenant_id, Tenant)
        if tenant is None:
            raise NotFound("tenant not found", code="tenant_not_found")
        return tenant

    def _guard_gateway(self, gateway: dict[str, Any]) -> None:
        """Run the SSRF guard on ``gateway.base_url``. Raises InvalidValue naming the field."""
        from billing.netguard import UnsafeAddressError

        url = gateway.get("base_url")
        if self._gateway_url_guard is None or not isinstance(url, str):
            return
        try:
            self._gateway_url_guard(url)
        except UnsafeAddressError as exc:
            raise InvalidValue(
                f"gateway.base_url refused: {exc}", code="gateway_address_refused", field="gateway.base_url"
            ) from None

    def issue_api_key(self, tenant_id: UUID, name: str = "default", key: str | None = None) -> str:
        """Issue an API key for the tenant and return its clear text (shown once, never stored).

        With ``key`` given (``billing dev --api-key``) that text is registered; registering the same key
        again for the same tenant is a no-op.

        Raises:
            NotFound: unknown tenant.
            ValueError: ``key`` shorter than 16 characters or owned by another tenant.
        """
        self.get_tenant(tenant_id)
        clear = key or generate_api_key()
        if len(clear) < 16:
            raise ValueError("an API key must have at least 16 characters")
        digest = hash_api_key(clear)
        existing = get_owned(self.store, api_key_id(digest), ApiKey)
        if existing is not None:
            if existing.tenant_id != tenant_id:
                raise ValueError("that key belongs to another tenant")
            return clear
        api_key = ApiKey.issue(
            tenant_id=tenant_id, name=name, prefix=clear[:8], key_hash=digest, at=self.clock.now()
        )
        self.store.save(api_key)
        return clear

    def revoke_api_key(self, tenant_id: UUID, key_id: UUID) -> None:
        """Revoke one of the tenant's keys. Raises NotFound (unknown or another tenant's key)."""
        api_key = get_owned(self.store, key_id, ApiKey, tenant_id)
        if api_key is None:
            raise NotFound("api key not found", code="api_key_not_found", field="key_id")
        api_key.revoke(at=self.clock.now())
        self.store.save(api_key)
        with self._lock:
            self._auth_generation += 1
            self._auth_cache.clear()

    def cached_tenant(self, key: str, digest: str | None = None) -> tuple[bool, UUID | None]:
        """``(True, tenant or None)`` when :meth:`authenticate` answered ``key`` less than 10 s ago, else
        ``(False, None)``: no I/O, so an async caller can skip the thread hop on a hit. ``digest``: the
        key's :func:`hash_api_key` when the caller has it already."""
        if not key or len(key) > 256:
            return True, None
        digest = digest or hash_api_key(key)
        with self._lock:
            return self._cached(digest, time.monotonic())

    def _cached(self, digest: str, now: float) -> tuple[bool, UUID | None]:
        """``(True, tenant or None)`` for an answer younger than :data:`AUTH_CACHE_TTL_S` at ``now``
        (monotonic seconds), else ``(False, None)``. Call with the lock held."""
        hit = self._auth_cache.get(digest)
        if hit is not None and now - hit[0] < AUTH_CACHE_TTL_S:
            return True, hit[1]
        return False, None

    def authenticate(self, key: str) -> UUID | None:
        """The tenant of a clear-text API key, or None (unknown, revoked). Answers are cached 10 s."""
        if not key or len(key) > 256:
            return None
        digest = hash_api_key(key)
        return self.authenticate_digests([digest])[digest]

    def authenticate_digests(self, digests: Iterable[str]) -> dict[str, UUID | None]:
        """The tenant of each key given by its :func:`hash_api_key` digest (None: unknown or revoked),
        the ones not answered in the last 10 s read with ONE query; every answer is cached 10 s (one
        racing a revocation is returned, not cached).

        Raises:
            psycopg.Error: the database is unreachable.
        """
        now = time.monotonic()
        answers: dict[str, UUID | None] = {}
        wanted: list[str] = []  # not answered in the last 10 s
        with self._lock:
            for digest in digests:
                if digest not in answers:
                    fresh, answers[digest] = self._cached(digest, now)
                    if not fresh:
                        wanted.append(digest)
            generation = self._auth_generation
        if not wanted:
            return answers
        found = load_many(self.store, (api_key_id(d) for d in wanted))
        for digest in wanted:
            api_key = found.get(api_key_id(digest))
            if not isinstance(api_key, ApiKey) or api_key.revoked:
                continue
            if secrets.compare_digest(api_key.key_hash, digest):
                answers[digest] = api_key.tenant_id
        with self._lock:
            if generation != self._auth_generation:
                return answers
            if len(self._auth_cache) + len(wanted) > 10_000:
                self._auth_cache.clear()
            for digest in wanted:
                self._auth_cache[digest] = (now, answers[digest])
        return answers

    def configure(
        self,
        tenant_id: UUID,
        *,
        policy: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
    ) -> Tenant:
        """Merge ``policy`` changes and/or replace the ``gateway`` settings, in ONE save: a request whose
        gateway is invalid leaves its policy unapplied too.

        Raises:
            NotFound; PolicyError / InvalidValue naming the field (``gateway_address_refused`` on
            ``gateway.base_url`` when the URL is, or resolves to, an address the operator does not allow).
        """
        tenant = self.get_tenant(tenant_id)
        now = self.clock.now()
        if policy is not None:
            tenant.change_policy(policy, at=now)
        if gateway is not None:
            tenant.configure_gateway(gateway, at=now)
            self._guard_gateway(gateway)
        self.store.save(tenant)
        return tenant
