"""The pure parts of the auditor's record: the rule that allowed a send (``billing.domain.audit``), the
calendar window an instant falls in, the tenant's policy and calendar versions, the claim carrying the
rule, the invoice reference of a contact, and the CSV shape of a history."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

from billing.domain.audit import allowed_by
from billing.domain.calendar import parse_calendar
from billing.domain.contact import Contact
from billing.domain.policy import default_policy_spec
from billing.domain.tenant import Tenant
from billing.domain.throttle import ThrottleLimits
from billing.services.history import CSV_COLUMNS, to_csv, to_csv_rows
from billing.services.ingest import invoice_ref

SP = ZoneInfo("America/Sao_Paulo")
GATEWAY = {"base_url": "https://evo.example", "instance": "loja", "api_key": "k", "api_version": "v2"}
CALENDAR = parse_calendar(
    {"timezone": "America/Sao_Paulo", "windows": {"mon-fri": [["08:00", "12:00"], ["13:00", "18:00"]]}}
)


def test_window_at_names_the_window_an_instant_falls_in_and_none_when_closed() -> None:
    monday = datetime(2025, 1, 20, 14, 30, tzinfo=SP)
    assert CALENDAR.window_at(monday) == (
        datetime(2025, 1, 20, 13, 0, tzinfo=SP),
        datetime(2025, 1, 20, 18, 0, tzinfo=SP),
    )
    assert CALENDAR.window_at(monday.replace(hour=12, minute=30)) is None  # lunch
    assert CALENDAR.window_at(monday.replace(hour=12, minute=0)) is None  # end is exclusive
    assert CALENDAR.window_at(datetime(2025, 1, 20, 11, 0, tzinfo=UTC)) == (  # 08:00 local
        datetime(2025, 1, 20, 8, 0, tzinfo=SP),
        datetime(2025, 1, 20, 12, 0, tzinfo=SP),
    )


JID = "5511987654321@s.whatsapp.net"
RULE_FACTS: dict[str, Any] = {
    "calendar": CALENDAR,
    "calendar_version": 3,
    "policy_version": 5,
    "limits": ThrottleLimits(messages_per_minute=20, max_messages_per_day=1000),
}
"""What both records below were decided under: the calendar, its version, the policy version, the limits."""


def test_allowed_by_records_window_versions_and_throttle_counts() -> None:
    at = datetime(2025, 1, 20, 9, 15, tzinfo=SP)
    rule = allowed_by(
        **RULE_FACTS, at=at, respects_business_hours=True, sent_in_window=4, sent_today=57, jid=JID
    )
    assert rule == {
        "policy_version": 5,
        "business_hours": {
            "applies": True,
            "open": True,
            "window_start": "2025-01-20T08:00:00-03:00",
            "window_end": "2025-01-20T12:00:00-03:00",
            "timezone": "America/Sao_Paulo",
            "calendar_version": 3,
        },
        "throttle": {
            "decision": "allowed",
            "messages_per_minute": 20,
            "sent_in_window": 4,
            "max_messages_per_day": 1000,
            "sent_today": 57,
            "local_date": "2025-01-20",
        },
        "recipient": {
            "opted_out": False,
            "debtor_cap": "allowed",
            "whatsapp_account": "5511987654321@s.whatsapp.net",
        },
    }
    notice = allowed_by(
        **RULE_FACTS,
        at=at.replace(hour=22),
        respects_business_hours=False,
        sent_in_window=0,
        sent_today=0,
        jid=None,
    )
    assert notice["business_hours"] == {
        "applies": False,  # a notice goes out at any hour; the record says it was outside every window
        "open": False,
        "window_start": None,
        "window_end": None,
        "timezone": "America/Sao_Paulo",
        "calendar_version": 3,
    }


def test_tenant_versions_move_with_the_events_that_set_the_policy_and_its_calendar() -> None:
    at = datetime(2025, 1, 20, 9, 0, tzinfo=UTC)
    tenant = Tenant.register(
        tenant_id=uuid4(), name="Loja", gateway=GATEWAY, policy=default_policy_spec(), at=at
    )
    assert (tenant.version, tenant.policy_version, tenant.calendar_version) == (1, 1, 1)
    tenant.change_policy({"messages_per_minute": 7}, at=at)
    assert (tenant.version, tenant.policy_version, tenant.calendar_version) == (2, 2, 1)
    tenant.configure_gateway({**GATEWAY, "api_key": "k2"}, at=at)
    assert (tenant.version, tenant.policy_version, tenant.calendar_version) == (3, 2, 1)
    tenant.change_policy({"windows": {"mon-fri": [["09:00", "17:00"]]}}, at=at)
    assert (tenant.version, tenant.policy_version, tenant.calendar_version) == (4, 4, 4)
    tenant.change_policy({"windows": {"mon-fri": [["09:00", "17:00"]]}}, at=at)  # no change, no event
    assert (tenant.version, tenant.policy_version) == (4, 4)


def test_the_claim_carries_the_rule_and_older_claims_read_without_one() -> None:
    at = datetime(2025, 1, 20, 12, 0, tzinfo=UTC)
    contact = Contact._create(
        Contact.Added, id=uuid4(), tenant_id=uuid4(), campaign_id=uuid4(), queue_id=uuid4(), index=0,
        template_type="overdue", external_id="lote-1", invoice_ref="NF-1", fields={"nome": "A"},
        telefone="+5511987654321", phone="+5511987654321", gateway_number="5511987654321",
        amount=None, amount_total=None, due_date=None, timestamp=at,
    )  # fmt: skip
    assert contact.invoice_ref == "NF-1"
    contact.dispatch(at=at, lease=timedelta(minutes=2), allowed_by={"policy_version": 1})
    claim = contact.collect_events()[-1]
    assert isinstance(claim, Contact.Dispatched)
    assert claim.allowed_by == {"policy_version": 1}
    old = Contact.Dispatched(
        originator_id=contact.id, originator_version=9, timestamp=at, attempt=2, lease_until=at
    )  # an event stored before the field existed decodes with the default
    assert old.allowed_by is None


def test_invoice_ref_is_the_contacts_own_external_id_else_the_requests() -> None:
    assert invoice_ref({"external_id": "NF-1"}, "lote-1") == "NF-1"
    assert invoice_ref({"external_id": "  "}, "lote-1") == "lote-1"
    assert invoice_ref({}, "lote-1") == "lote-1"
    assert invoice_ref({}, None) is None


def test_history_csv_pulls_the_usual_fields_out_of_the_event_data() -> None:
    entry = {
        "at": "2025-01-20T12:00:02+00:00", "event": "sent", "contact_id": "c", "campaign_id": "k",
        "queue_id": "q", "template_type": "overdue", "external_id": "lote-1", "invoice": "NF-1",
        "phone": "+5511987654321",
        "data": {"text": "Olá, Maria", "gateway_message_id": "3EB0",
                 "remote_jid": "5511987654321@s.whatsapp.net", "template_id": None, "template_version": 2,
                 "variation": 1},
    }  # fmt: skip
    rows = list(to_csv_rows([entry]))
    assert rows[0] == list(CSV_COLUMNS)
    row = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert (row["event"], row["text"], row["gateway_message_id"], row["template_version"]) == (
        "sent",
        "Olá, Maria",
        "3EB0",
        "2",
    )
    assert (row["attempt"], row["template_id"], row["allowed_by"]) == ("", "", "")
    parsed = list(csv.reader(io.StringIO(to_csv([entry]))))
    assert parsed == rows


def test_a_claim_decision_records_the_throttle_counts_and_versions_it_was_decided_on() -> None:
    from dataclasses import replace

    from billing.domain.sending import Action, ThrottleState, decide
    from tests.unit.test_sending import MONDAY_10, WINDOW, facts

    arrivals = (
        MONDAY_10 - timedelta(seconds=50),
        MONDAY_10 - timedelta(seconds=5),
        MONDAY_10 - timedelta(minutes=5),
    )
    decision = decide(
        replace(
            facts(),
            policy_versions=(4, 2),
            throttle=ThrottleState(arrivals=arrivals, arrivals_that_day=7, window=WINDOW),
        )
    )
    assert decision.action is Action.CLAIM
    assert decision.allowed_by is not None
    assert decision.allowed_by["policy_version"] == 4
    assert decision.allowed_by["business_hours"]["calendar_version"] == 2
    assert decision.allowed_by["throttle"] == {
        "decision": "allowed",
        "messages_per_minute": 3,
        "sent_in_window": 2,  # arrival 2 s after now: the two of the last minute, not the one 5 min ago
        "max_messages_per_day": 10,
        "sent_today": 7,
        "local_date": "2025-01-20",
    }


def test_a_history_row_holds_the_events_own_fields_as_json_builtins() -> None:
    import json

    from billing.projections.history import event_data, history_row
    from tests.unit.test_aggregates import CREATION_VALUES

    at = datetime(2025, 1, 20, 12, 0, 2, tzinfo=UTC)
    contact_id, tenant_id = uuid4(), uuid4()
    event = Contact.creation_event(Contact.Added, id=contact_id, at=at, **CREATION_VALUES["added"])
    row = history_row(7, tenant_id, event)
    assert row[:6] == (7, tenant_id, contact_id, 1, "billing.Contact.Added", at)
    data = json.loads(row[6].obj)
    assert data == event_data(event)
    values = CREATION_VALUES["added"]
    assert data["campaign_id"] == str(values["campaign_id"])
    assert data["amount"] == str(values["amount"])
    assert data["due_date"] == values["due_date"].isoformat()
    assert data["fields"] == values["fields"]
    assert set(data) == set(values) | {"template_version"}  # its one default field not given
    assert (data["amount_total"], data["template_version"]) == (None, None)
