"""The API key check answers from memory after a first lookup (no thread hop on a status poll) and
forgets a revoked key at once."""

from __future__ import annotations

from billing.bootstrap import build_container
from billing.services.clock import FakeClock
from billing.services.tenants import TenantService, api_key_id, hash_api_key
from billing.settings import Settings
from tests.integration.test_cancel_batch import T0

GATEWAY = {"base_url": "https://evo.example", "instance": "loja", "api_key": "k", "api_version": "v2"}


def test_cached_tenant_answers_after_a_lookup_and_forgets_a_revoked_key(database_url: str) -> None:
    container = build_container(Settings(database_url=database_url), clock=FakeClock(T0))
    try:
        tenants = TenantService(container.store, container.clock)
        tenant_id = tenants.create_tenant(name="Loja", gateway=GATEWAY)
        key = tenants.issue_api_key(tenant_id, "erp")
        assert tenants.cached_tenant(key) == (False, None)  # never looked up
        assert tenants.cached_tenant(key, hash_api_key(key)) == (False, None)
        assert tenants.cached_tenant("") == (True, None)
        assert tenants.cached_tenant("x" * 257) == (True, None)
        assert tenants.authenticate(key) == tenant_id
        assert tenants.cached_tenant(key) == (True, tenant_id)
        assert tenants.cached_tenant(key, hash_api_key(key)) == (True, tenant_id)
        assert api_key_id(hash_api_key(key)) is api_key_id(hash_api_key(key))  # cached: the same object
        assert tenants.authenticate("bk_unknown") is None
        assert tenants.cached_tenant("bk_unknown") == (True, None)

        tenants.revoke_api_key(tenant_id, api_key_id(hash_api_key(key)))
        assert tenants.cached_tenant(key) == (False, None)
        assert tenants.authenticate(key) is None
    finally:
        container.pool.close()
        container.store.close()


def test_many_keys_are_checked_with_one_read_and_their_answers_cached(database_url: str) -> None:
    container = build_container(Settings(database_url=database_url), clock=FakeClock(T0))
    try:
        tenants = TenantService(container.store, container.clock)
        first = tenants.create_tenant(name="Loja", gateway=GATEWAY)
        second = tenants.create_tenant(name="Outra", gateway=GATEWAY)
        keys = [tenants.issue_api_key(first, "erp"), tenants.issue_api_key(second, "erp")]
        revoked = tenants.issue_api_key(first, "old")
        tenants.revoke_api_key(first, api_key_id(hash_api_key(revoked)))
        digests = [hash_api_key(k) for k in [*keys, revoked, "bk_unknown"]]
        reads = []
        original = container.store.recorder.datastore.get_connection

        def counted(*args: object, **kwargs: object) -> object:
            reads.append(1)
            return original(*args, **kwargs)

        container.store.recorder.datastore.get_connection = counted  # type: ignore[method-assign]
        answers = tenants.authenticate_digests([*digests, digests[0]])
        assert answers == {digests[0]: first, digests[1]: second, digests[2]: None, digests[3]: None}
        assert len(reads) == 1
        assert [tenants.cached_tenant(k) for k in [*keys, revoked, "bk_unknown"]] == [
            (True, first),
            (True, second),
            (True, None),
            (True, None),
        ]
        assert tenants.authenticate_digests(digests) == answers  # all cached: no read
        assert len(reads) == 1
    finally:
        container.pool.close()
        container.store.close()
