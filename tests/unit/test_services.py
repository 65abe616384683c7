"""Application services over an in-memory fake of their port: the event store on the library's in-memory
persistence (``eventsourcing.popo``) and a fake clock. No database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from billing.domain.calendar import PolicyError
from billing.domain.errors import NotFound
from billing.domain.template import MessageTemplate
from billing.domain.templating import TemplateSyntaxError
from billing.eventstore import EventStore
from billing.services.clock import FakeClock
from billing.services.templates import TemplateService
from billing.services.tenants import TenantService, hash_api_key

T0 = datetime(2025, 1, 20, 12, 0, tzinfo=UTC)
GATEWAY = {"base_url": "https://evo.example", "instance": "loja", "api_key": "k", "api_version": "v2"}


@pytest.fixture
def store() -> EventStore:
    return EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def test_a_new_tenant_gets_the_default_templates_in_one_save(store: EventStore, clock: FakeClock) -> None:
    tenant_id = TenantService(store, clock).create_tenant(name="Loja", gateway=GATEWAY)
    stored = store.recorder.select_notifications(start=None, limit=100)
    assert [n.topic for n in stored] == [
        "billing.Tenant.Registered",
        *["billing.Template.Created"] * 3,
    ]
    templates = [store.repository.get(n.originator_id) for n in stored[1:]]
    assert all(isinstance(t, MessageTemplate) and t.tenant_id == tenant_id for t in templates)
    assert sorted(t.template_type for t in templates) == ["notification", "overdue", "upcoming"]


def test_an_issued_key_authenticates_until_revoked(store: EventStore, clock: FakeClock) -> None:
    service = TenantService(store, clock)
    tenant_id = service.create_tenant(name="Loja", gateway=GATEWAY)
    key = service.issue_api_key(tenant_id, "erp")
    assert service.authenticate(key) == tenant_id
    assert service.authenticate(key + "x") is None
    assert hash_api_key(key) != key  # stored hashed (promise 8)

    from billing.domain.apikey import api_key_id

    service.revoke_api_key(tenant_id, api_key_id(hash_api_key(key)))
    assert service.authenticate(key) is None
    with pytest.raises(NotFound):
        service.revoke_api_key(uuid4(), api_key_id(hash_api_key(key)))  # another tenant's key


def test_configure_applies_policy_and_gateway_in_one_save_or_nothing(
    store: EventStore, clock: FakeClock
) -> None:
    service = TenantService(store, clock)
    tenant_id = service.create_tenant(name="Loja", gateway=GATEWAY)
    clock.advance(timedelta(minutes=1))
    tenant = service.configure(
        tenant_id, policy={"messages_per_minute": 7}, gateway={**GATEWAY, "api_key": "k2"}
    )
    assert (tenant.sending_policy.limits.messages_per_minute, tenant.gateway["api_key"]) == (7, "k2")
    generation = tenant.gateway_generation
    with pytest.raises(PolicyError) as refused:
        service.configure(tenant_id, policy={"messages_per_minute": 0}, gateway={**GATEWAY, "api_key": "k3"})
    assert refused.value.field == "messages_per_minute"
    again = service.get_tenant(tenant_id)
    assert (again.gateway["api_key"], again.gateway_generation) == ("k2", generation)


def test_templates_are_created_changed_and_refused_per_tenant(store: EventStore, clock: FakeClock) -> None:
    tenant_id = TenantService(store, clock).create_tenant(name="Loja", gateway=GATEWAY)
    templates = TemplateService(store, clock)
    created = templates.create(
        tenant_id,
        name="Lembrete",
        template_type="overdue",
        description="",
        variations=["Oi {{nome_cliente}}"],
    )
    changed = templates.change(
        tenant_id, created.id, variations=["Olá {{nome_cliente}}", "Oi {{nome_cliente}}"]
    )
    assert (changed.version, list(changed.variations)) == (2, ["Olá {{nome_cliente}}", "Oi {{nome_cliente}}"])
    with pytest.raises(TemplateSyntaxError):
        templates.change(tenant_id, created.id, variations=["{{#if x}}"])
    with pytest.raises(NotFound):
        templates.get(uuid4(), created.id)  # another tenant: 404 (promise 7)
    with pytest.raises(NotFound):
        templates.create(uuid4(), name="x", template_type="overdue", description="", variations=["Oi"])
    assert templates.deactivate(tenant_id, created.id).active is False
