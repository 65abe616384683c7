"""Aggregate behaviour: the contact's claim/outcome lifecycle, queue pauses, templates, tenants, keys."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

from billing.domain.apikey import ApiKey, api_key_id
from billing.domain.calendar import PolicyError
from billing.domain.contact import Contact
from billing.domain.errors import Conflict, InvalidValue
from billing.domain.queue import Queue
from billing.domain.template import MessageTemplate
from billing.domain.templating import TemplateSyntaxError
from billing.domain.tenant import Tenant
from billing.domain.types import ContactStatus
from tests.factories import added_contact

T0 = datetime(2025, 1, 20, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=120)
GATEWAY = {"base_url": "http://gw", "instance": "i", "api_key": "k", "api_version": "v2"}


def new_contact() -> Contact:
    return added_contact(at=T0, external_id="fatura-1")


def test_contact_is_sent_after_a_claim() -> None:
    contact = new_contact()
    assert contact.dispatch(at=T0, lease=LEASE) == 1
    contact.record_sent(
        gateway_message_id="3EB0", remote_jid="5511987654321@s.whatsapp.net", text="Olá", at=T0
    )
    assert contact.status is ContactStatus.SENT
    assert [type(e).TOPIC for e in contact.collect_events()] == [
        "billing.Contact.Added",
        "billing.Contact.Dispatched",
        "billing.Contact.Sent",
    ]
    assert contact.collect_events() == []


CREATION_VALUES: dict[str, dict[str, Any]] = {
    "added": {
        "tenant_id": UUID("00000000-0000-0000-0000-00000000000a"),
        "campaign_id": UUID("00000000-0000-0000-0000-00000000000b"),
        "queue_id": UUID("00000000-0000-0000-0000-00000000000c"),
        "index": 3,
        "template_type": "overdue",
        "external_id": "lote-1",
        "invoice_ref": "NF-3",
        "fields": {"nome": "Ana", "telefone": "11987654321", "external_id": "NF-3"},
        "telefone": "11987654321",
        "phone": "+5511987654321",
        "gateway_number": "5511987654321",
        "amount": Decimal("150.00"),
        "amount_total": None,
        "due_date": date(2025, 1, 15),
        "ordinal": 2,
        "template_id": UUID("00000000-0000-0000-0000-00000000000d"),
    },
    "rejected": {
        "tenant_id": UUID("00000000-0000-0000-0000-00000000000a"),
        "campaign_id": UUID("00000000-0000-0000-0000-00000000000b"),
        "queue_id": UUID("00000000-0000-0000-0000-00000000000c"),
        "index": 4,
        "template_type": "overdue",
        "external_id": None,
        "invoice_ref": None,
        "fields": {"nome": "Bia", "telefone": "123"},
        "telefone": "123",
        "code": "invalid_phone",
        "message": "telefone is not a valid phone number",
        "field": "contacts[4].telefone",
    },
}


@pytest.mark.parametrize("kind", ["added", "rejected"])
def test_creation_event_is_the_event_create_records_and_folds_into_the_same_contact(kind: str) -> None:
    event_class = Contact.Added if kind == "added" else Contact.Rejected
    contact_id = UUID("00000000-0000-0000-0000-000000000001")
    values = CREATION_VALUES[kind]
    event = Contact.creation_event(event_class, id=contact_id, at=T0, **values)
    created = Contact._create(event_class, id=contact_id, timestamp=T0, **values)
    [recorded] = created.collect_events()
    assert type(event) is event_class
    assert list(vars(event).items()) == list(vars(recorded).items())  # same fields, same order
    assert event.originator_version == 1
    assert event.originator_topic == "billing.Contact"
    assert vars(event.mutate(None)) == vars(created)


def test_creation_event_refuses_a_missing_or_unknown_field() -> None:
    values = dict(CREATION_VALUES["added"])
    del values["phone"]
    with pytest.raises(TypeError, match="phone"):
        Contact.creation_event(Contact.Added, id=uuid4(), at=T0, **values)
    with pytest.raises(TypeError, match="colour"):
        Contact.creation_event(Contact.Added, id=uuid4(), at=T0, **CREATION_VALUES["added"], colour="red")
    with pytest.raises(TypeError, match="UUID"):
        Contact.creation_event(Contact.Added, id="c-1", at=T0, **CREATION_VALUES["added"])  # type: ignore[arg-type]


def test_sent_contact_cannot_be_claimed_again() -> None:
    contact = new_contact()
    contact.dispatch(at=T0, lease=LEASE)
    contact.record_sent(gateway_message_id="3EB0", remote_jid=None, text="Olá", at=T0)
    with pytest.raises(Conflict) as error:
        contact.dispatch(at=T0 + LEASE * 2, lease=LEASE)
    assert error.value.code == "already_final"


def test_claim_in_flight_blocks_a_second_claim_until_the_lease_expires() -> None:
    contact = new_contact()
    contact.dispatch(at=T0, lease=LEASE)
    with pytest.raises(Conflict) as error:
        contact.dispatch(at=T0 + timedelta(seconds=119), lease=LEASE)
    assert error.value.code == "in_flight"
    assert contact.dispatch(at=T0 + LEASE, lease=LEASE) == 2


def test_retryable_failure_returns_the_contact_to_pending_until_retry_at() -> None:
    contact = new_contact()
    contact.dispatch(at=T0, lease=LEASE)
    retry_at = T0 + timedelta(seconds=30)
    contact.record_failure(code="connection_closed", message="x", retryable=True, retry_at=retry_at, at=T0)
    assert (contact.status, contact.not_before, contact.attempts) == (ContactStatus.PENDING, retry_at, 1)
    contact.dispatch(at=retry_at, lease=LEASE)
    contact.record_failure(code="connection_closed", message="x", retryable=True, retry_at=None, at=retry_at)
    assert (contact.status, contact.error_code, contact.attempts) == (
        ContactStatus.FAILED,
        "connection_closed",
        2,
    )


def test_deferral_releases_the_claim_without_spending_an_attempt() -> None:
    contact = new_contact()
    contact.dispatch(at=T0, lease=LEASE)
    monday = T0 + timedelta(days=3)
    contact.defer(reason="outside_business_hours", not_before=monday, at=T0)
    assert (contact.status, contact.attempts, contact.not_before) == (ContactStatus.PENDING, 0, monday)


def test_cancelled_contact_is_final_and_cancelling_twice_records_once() -> None:
    contact = new_contact()
    assert contact.cancel(reason="paid", at=T0) is True
    assert contact.cancel(reason="paid", at=T0) is False
    assert contact.status is ContactStatus.CANCELLED
    with pytest.raises(Conflict):
        contact.dispatch(at=T0, lease=LEASE)


def test_outcome_without_a_claim_is_refused() -> None:
    contact = new_contact()
    with pytest.raises(Conflict) as error:
        contact.record_sent(gateway_message_id="x", remote_jid=None, text="t", at=T0)
    assert error.value.code == "not_dispatched"


def test_queue_pause_is_recorded_once_per_reason_and_resume_clears_it() -> None:
    queue = Queue.open(
        queue_id=uuid4(), tenant_id=uuid4(), campaign_id=uuid4(), template_type="overdue", total=3, at=T0
    )
    resume_at = T0 + timedelta(hours=14)
    queue.pause(reason="outside_business_hours", resume_at=resume_at, at=T0)
    queue.pause(reason="outside_business_hours", resume_at=resume_at, at=T0)
    assert (queue.paused_reason, queue.resume_at, queue.version) == ("outside_business_hours", resume_at, 2)
    queue.resume(at=resume_at)
    assert (queue.paused, queue.version) == (False, 3)
    queue.cancel(reason="cancelled_by_client", at=resume_at)
    with pytest.raises(Conflict):
        queue.pause(reason="daily_limit_reached", resume_at=None, at=resume_at)


def test_template_change_is_an_event_and_bad_variation_is_refused_with_position() -> None:
    template = MessageTemplate.create(
        template_id=uuid4(),
        tenant_id=uuid4(),
        name="Atraso",
        template_type="overdue",
        description="",
        variations=["Olá {{nome}}"],
        active=True,
        at=T0,
    )
    template.change(at=T0, variations=["Olá {{nome}}", "Oi {{nome}}"])
    template.change(at=T0, variations=["Olá {{nome}}", "Oi {{nome}}"])
    assert (template.version, template.variations) == (2, ["Olá {{nome}}", "Oi {{nome}}"])
    with pytest.raises(TemplateSyntaxError) as error:
        template.change(at=T0, variations=["ok", "Olá {{nome}"])
    assert (error.value.field, error.value.line, error.value.column) == ("variations[1]", 1, 5)
    with pytest.raises(InvalidValue):
        template.change(at=T0, variations=[])


def test_tenant_policy_change_is_validated_naming_the_field() -> None:
    tenant = Tenant.register(tenant_id=uuid4(), name="Loja", gateway=GATEWAY, policy={}, at=T0)
    with pytest.raises(PolicyError) as error:
        tenant.change_policy({"windows": {"mon": [["22:00", "22:00"]]}}, at=T0)
    assert error.value.field is not None and error.value.field.startswith("windows.mon")
    with pytest.raises(PolicyError) as rate_error:
        tenant.change_policy({"messages_per_minute": -1}, at=T0)
    assert rate_error.value.field == "messages_per_minute"
    tenant.change_policy({"messages_per_minute": 5}, at=T0)
    assert tenant.sending_policy.limits.messages_per_minute == 5


def test_tenant_gateway_must_be_complete() -> None:
    with pytest.raises(InvalidValue) as error:
        Tenant.register(
            tenant_id=uuid4(), name="Loja", gateway={**GATEWAY, "api_version": "v3"}, policy={}, at=T0
        )
    assert error.value.field == "gateway.api_version"


def test_api_key_id_is_derived_from_its_hash() -> None:
    key = ApiKey.issue(tenant_id=uuid4(), name="erp", prefix="bk_abcde", key_hash="ab" * 32, at=T0)
    assert key.id == api_key_id("ab" * 32) == UUID(f"{key.id}")
    key.revoke(at=T0)
    key.revoke(at=T0)
    assert (key.revoked, key.version) == (True, 2)


def test_cancellation_during_an_attempt_still_records_the_send_that_went_out() -> None:
    contact = new_contact()
    contact.dispatch(at=T0, lease=LEASE)
    assert contact.cancel(reason="paid", at=T0) is True
    contact.record_sent(gateway_message_id="3EB0", remote_jid=None, text="Olá", at=T0)
    assert contact.status is ContactStatus.SENT


def test_cancellation_during_an_attempt_stands_when_the_attempt_failed() -> None:
    contact = new_contact()
    contact.dispatch(at=T0, lease=LEASE)
    contact.cancel(reason="paid", at=T0)
    contact.record_failure(code="connection_closed", message="x", retryable=True, retry_at=T0 + LEASE, at=T0)
    assert contact.status is ContactStatus.CANCELLED
    assert [type(e).TOPIC for e in contact.collect_events()][-1] == "billing.Contact.Cancelled"


def test_cancelled_pending_contact_refuses_a_late_send_record() -> None:
    contact = new_contact()
    contact.cancel(reason="paid", at=T0)
    with pytest.raises(Conflict):
        contact.record_sent(gateway_message_id="3EB0", remote_jid=None, text="Olá", at=T0)


def test_pause_between_messages_is_bounded_so_a_claim_outlives_the_gateway_call() -> None:
    tenant = Tenant.register(tenant_id=uuid4(), name="Loja", gateway=GATEWAY, policy={}, at=T0)
    with pytest.raises(PolicyError) as error:
        tenant.change_policy({"pause_min_s": 1, "pause_max_s": 61}, at=T0)
    assert error.value.field == "pause_max_s"


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"max_attempts": 0}, "retry.max_attempts"),
        ({"max_attempts": 2.7}, "retry.max_attempts"),
        ({"max_attempts": "5"}, "retry.max_attempts"),
        ({"base_delay_s": "x"}, "retry.base_delay_s"),
    ],
)
def test_retry_settings_are_refused_not_coerced_naming_the_field(
    retry: dict[str, object], field: str
) -> None:
    tenant = Tenant.register(tenant_id=uuid4(), name="Loja", gateway=GATEWAY, policy={}, at=T0)
    with pytest.raises(PolicyError) as error:
        tenant.change_policy({"retry": retry}, at=T0)
    assert error.value.field == field


def test_a_tenants_parsed_policy_is_reused_until_a_policy_change_replaces_the_spec() -> None:
    from billing.domain.policy import default_policy_spec
    from billing.domain.tenant import Tenant

    gateway = {"base_url": "http://gw", "instance": "loja", "api_key": "k", "api_version": "v2"}
    tenant = Tenant.register(
        tenant_id=uuid4(), name="Loja", gateway=gateway, policy=default_policy_spec(), at=T0
    )
    first = tenant.sending_policy
    assert tenant.sending_policy is first
    tenant.change_policy({"messages_per_minute": 7}, at=T0)
    assert tenant.sending_policy.limits.messages_per_minute == 7
    assert first.limits.messages_per_minute != 7
