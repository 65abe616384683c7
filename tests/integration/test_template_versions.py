"""A template edited after a batch was accepted: each contact keeps the version its variables were
checked against (``Contact.Added.template_version``), and the worker's renderer falls back to it, read
from the event store, when the current version needs a variable the contact lacks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from uuid import uuid5
from zoneinfo import ZoneInfo

import pytest

from billing.api.schemas import SendRequest
from billing.bootstrap import Container, build_container
from billing.domain.contact import Contact
from billing.domain.types import TemplateType
from billing.eventstore import get_owned
from billing.projections.views import project_pending
from billing.services.clock import FakeClock
from billing.services.ingest import IngestService
from billing.services.queries import Queries
from billing.services.templates import TemplateService
from billing.services.tenants import TenantService
from billing.settings import Settings
from billing.worker.rendering import Renderer, RenderError, template_variations_at

GATEWAY = {"base_url": "https://evo.example", "instance": "loja", "api_key": "k", "api_version": "v2"}

NOW = datetime(2025, 1, 20, 13, 0, tzinfo=UTC)
TZ = ZoneInfo("America/Sao_Paulo")


@pytest.fixture
def container(database_url: str) -> Iterator[Container]:
    made = build_container(Settings(database_url=database_url), clock=FakeClock(NOW))
    try:
        yield made
    finally:
        made.pool.close()
        made.store.close()


def test_an_edit_that_needs_a_new_variable_leaves_accepted_contacts_on_their_version(
    container: Container,
) -> None:
    store = container.store
    tenant_id = TenantService(store, container.clock).create_tenant(name="Loja", gateway=GATEWAY)
    project_pending(store, container.pool)
    queries = Queries(container.pool)
    ingest = IngestService(store, queries, container.clock)
    template_id, version, _ = ingest.sending_template(tenant_id, TemplateType.NOTIFICATION)
    posted = ingest.submit(
        tenant_id=tenant_id,
        path_type=TemplateType.NOTIFICATION,
        request=SendRequest(contacts=[{"nome": "Ana", "telefone": "+5511987654321"}]),
    )
    contact = get_owned(store, uuid5(posted.campaign_id, "0"), Contact)
    assert contact is not None
    assert (contact.template_id, contact.template_version) == (template_id, version)

    templates = TemplateService(store, container.clock)
    templates.change(tenant_id, template_id, variations=["Fatura {{numero_fatura}}: {{nome}}."])
    project_pending(store, container.pool)
    assert template_variations_at(store, template_id, version + 1) == ["Fatura {{numero_fatura}}: {{nome}}."]
    accepted_texts = template_variations_at(store, template_id, version)
    assert accepted_texts is not None and accepted_texts != ["Fatura {{numero_fatura}}: {{nome}}."]
    assert template_variations_at(store, template_id, version + 5) is None

    renderer = Renderer(container.pool, ttl_s=0, variations_at=partial(template_variations_at, store))
    rendered = renderer.render(contact, now=NOW, tz=TZ)
    assert (rendered.template_id, rendered.template_version) == (template_id, version)
    plain = Renderer(container.pool, ttl_s=0)  # without the store: the current version, as before
    with pytest.raises(RenderError) as refused:
        plain.render(contact, now=NOW, tz=TZ)
    assert (refused.value.code, refused.value.message) == (
        "missing_variable",
        "the template needs numero_fatura",
    )
