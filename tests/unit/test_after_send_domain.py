"""Pure decisions of "after the send": webhook envelopes, receipts, stop words, signatures, JID lookup,
per-debtor cap, the Conversation (consent ledger) and Engagement aggregates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from billing.domain.calendar import default_calendar_spec, parse_calendar
from billing.domain.contact import Contact
from billing.domain.conversation import Conversation, conversation_id
from billing.domain.debtor_cap import decide_cap
from billing.domain.engagement import ERP_RETRY_DELAYS_S, Engagement, erp_next_attempt
from billing.domain.errors import Conflict, InvalidValue
from billing.domain.gateway_events import parse_webhook, receipt_steps
from billing.domain.optout import DEFAULT_STOP_WORDS, fold, matching_stop_word, validate_stop_words
from billing.domain.signing import signature_header, verify
from billing.domain.whatsapp import Account, choose_account, is_fresh, lookup_batches, lookup_candidates

AT = datetime(2025, 1, 15, 13, 0, tzinfo=UTC)  # 10:00 in São Paulo, a Wednesday


# ---- envelopes --------------------------------------------------------------------------------------


def test_v2_messages_update_uses_key_id_not_gateway_db_id() -> None:
    batch = parse_webhook(
        {
            "event": "messages.update",
            "instance": "loja",
            "data": {
                "keyId": "3EB0AAA",
                "remoteJid": "5511987654321@s.whatsapp.net",
                "fromMe": True,
                "status": "DELIVERY_ACK",
                "instanceId": "i",
                "messageId": "cm0dbid",
            },
            "apikey": None,
        }
    )
    assert batch.event == "messages.update"
    assert [(r.message_id, r.status, r.remote_jid) for r in batch.receipts] == [
        ("3EB0AAA", "DELIVERY_ACK", "5511987654321@s.whatsapp.net")
    ]


def test_v1_messages_update_upper_case_event_list_data_and_ms_datetime() -> None:
    batch = parse_webhook(
        {
            "event": "MESSAGES_UPDATE",
            "instance": "loja",
            "data": [
                {
                    "id": "3EB0BBB",
                    "remoteJid": "x@s.whatsapp.net",
                    "fromMe": True,
                    "status": "READ",
                    "datetime": 1735689600000,
                },
                {"id": "3EB0CCC", "remoteJid": "x@s.whatsapp.net", "fromMe": True, "status": 4},
                {"id": "3EB0DDD", "fromMe": False, "status": "READ"},
            ],
        }
    )
    assert [(r.message_id, r.status, r.at) for r in batch.receipts] == [
        ("3EB0BBB", "READ", datetime(2025, 1, 1, tzinfo=UTC)),
        ("3EB0CCC", "READ", None),
    ]
    assert batch.ignored == 1


def test_messages_upsert_from_the_debtor_and_not_from_us() -> None:
    body = {
        "event": "messages.upsert",
        "data": {
            "key": {"remoteJid": "557588251234@s.whatsapp.net", "fromMe": False, "id": "ABC1"},
            "message": {"extendedTextMessage": {"text": "PARAR"}},
            "messageTimestamp": "1735689600",
        },
    }
    batch = parse_webhook(body)
    assert [(m.message_id, m.remote_jid, m.text, m.at) for m in batch.messages] == [
        ("ABC1", "557588251234@s.whatsapp.net", "PARAR", datetime(2025, 1, 1, tzinfo=UTC))
    ]
    ours = {**body, "data": {**body["data"], "key": {"remoteJid": "x", "fromMe": True, "id": "Z"}}}
    assert parse_webhook(ours).messages == ()


def test_connection_update_and_event_from_the_url() -> None:
    batch = parse_webhook(
        {"instance": "loja", "data": {"instance": "loja", "state": "close", "statusReason": 428}},
        event_hint="connection-update",
    )
    assert batch.connection is not None and batch.connection.state == "close"
    with pytest.raises(ValueError):
        parse_webhook([1, 2])
    assert parse_webhook({"event": "chats.update", "data": {}}).ignored == 1


# ---- receipts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "have", "steps"),
    [
        ("DELIVERY_ACK", (False, False, False), ("delivered",)),
        ("READ", (False, False, False), ("delivered", "read")),
        ("READ", (True, False, False), ("read",)),
        ("DELIVERY_ACK", (True, True, False), ()),
        ("READ", (True, True, False), ()),
        ("PLAYED", (False, False, False), ("delivered", "read", "played")),
        ("SERVER_ACK", (False, False, False), ()),
        ("ERROR", (False, False, False), ()),
        ("bogus", (False, False, False), ()),
    ],
)
def test_receipt_steps_are_monotone(
    status: str, have: tuple[bool, bool, bool], steps: tuple[str, ...]
) -> None:
    assert receipt_steps(status, delivered=have[0], read=have[1], played=have[2]) == steps


def _sent_contact() -> Contact:
    created = Contact._create(
        Contact.Added, id=uuid4(), tenant_id=uuid4(), campaign_id=uuid4(), queue_id=uuid4(), index=0,
        template_type="overdue", external_id=None, fields={}, telefone="x", phone="+5511987654321",
        gateway_number="5511987654321", amount=None, amount_total=None, due_date=None, timestamp=AT,
    )  # fmt: skip
    created.dispatch(at=AT, lease=timedelta(seconds=60))
    created.record_sent(gateway_message_id="M1", remote_jid="j", text="t", at=AT, jid_asked="j")
    return created


def test_contact_receipts_out_of_order_and_duplicated() -> None:
    contact = _sent_contact()
    contact.collect_events()
    assert contact.record_receipt(status="READ", reported_at=None, at=AT) == ("delivered", "read")
    assert contact.record_receipt(status="DELIVERY_ACK", reported_at=None, at=AT) == ()
    assert contact.record_receipt(status="READ", reported_at=None, at=AT) == ()
    assert [type(e).__name__ for e in contact.collect_events()] == ["Delivered", "Read"]
    assert contact.delivered_at == AT and contact.read_at == AT


def test_contact_not_sent_refuses_receipts_and_skip_without_claim() -> None:
    contact = Contact._create(
        Contact.Added, id=uuid4(), tenant_id=uuid4(), campaign_id=uuid4(), queue_id=uuid4(), index=0,
        template_type="overdue", external_id=None, fields={}, telefone="x", phone="+5511987654321",
        gateway_number="5511987654321", amount=None, amount_total=None, due_date=None, timestamp=AT,
    )  # fmt: skip
    with pytest.raises(Conflict):
        contact.record_receipt(status="READ", reported_at=None, at=AT)
    contact.skip(code="opted_out", message="m", at=AT)
    assert contact.status.value == "skipped"
    with pytest.raises(Conflict):
        contact.skip(code="opted_out", message="m", at=AT)


# ---- stop words -------------------------------------------------------------------------------------


def test_stop_words_ignore_case_accents_punctuation_and_match_whole_words() -> None:
    assert fold("  Não QUERO   mais!!") == "nao quero mais"
    assert matching_stop_word("PARAR", DEFAULT_STOP_WORDS) == "parar"
    assert matching_stop_word("por favor, parar!", DEFAULT_STOP_WORDS) == "parar"
    assert matching_stop_word("nao quero mais receber", DEFAULT_STOP_WORDS) == "não quero mais"
    assert matching_stop_word("Sáir", DEFAULT_STOP_WORDS) == "sair"
    assert matching_stop_word("vou separar o dinheiro", DEFAULT_STOP_WORDS) is None
    assert matching_stop_word("ok, obrigado", DEFAULT_STOP_WORDS) is None
    assert matching_stop_word("Chega!", ["CHEGA"]) == "CHEGA"


def test_stop_words_validation_names_the_field() -> None:
    assert validate_stop_words(["Parar", "parar", "Chega"]) == ("Parar", "Chega")
    with pytest.raises(InvalidValue) as exc:
        validate_stop_words(["ok", "  "])
    assert exc.value.field == "stop_words[1]"
    with pytest.raises(InvalidValue):
        validate_stop_words([])


# ---- conversation (consent ledger) -------------------------------------------------------------------


def test_conversation_opt_out_is_recorded_once_with_the_message_and_lifted() -> None:
    tenant = uuid4()
    conv = Conversation.open(tenant, "+5511987654321", at=AT)
    assert conv.id == conversation_id(tenant, "+5511987654321")
    cid = uuid4()
    assert (
        conv.receive(
            message_id="A",
            text="quando vence?",
            remote_jid="j",
            contact_id=cid,
            stop_words=DEFAULT_STOP_WORDS,
            at=AT,
        )
        is None
    )
    assert (
        conv.receive(
            message_id="B", text="PARAR", remote_jid="j", contact_id=cid, stop_words=DEFAULT_STOP_WORDS, at=AT
        )
        == "parar"
    )
    assert (
        conv.receive(
            message_id="B", text="PARAR", remote_jid="j", contact_id=cid, stop_words=DEFAULT_STOP_WORDS, at=AT
        )
        is None
    )
    assert (
        conv.receive(
            message_id="C", text="sair", remote_jid="j", contact_id=cid, stop_words=DEFAULT_STOP_WORDS, at=AT
        )
        is None
    )
    names = [type(e).__name__ for e in conv.collect_events()]
    assert names == ["Opened", "Replied", "Replied", "OptedOut", "Replied"]
    assert conv.opted_out and conv.replies == 3
    conv.lift_opt_out(by="admin", reason="debtor asked", at=AT)
    assert not conv.opted_out
    with pytest.raises(Conflict):
        conv.lift_opt_out(by="admin", reason="again", at=AT)


# ---- engagement ------------------------------------------------------------------------------------


def test_engagement_settings_secret_and_endpoints() -> None:
    tenant = uuid4()
    e = Engagement.start(tenant, at=AT)
    assert e.typed.daily_cap == 1 and e.typed.stop_words == DEFAULT_STOP_WORDS
    e.set_gateway_secret("s3cret", at=AT)
    assert e.gateway_secret_matches("s3cret") and not e.gateway_secret_matches("other")
    assert not e.gateway_secret_matches(None)
    e.change_settings({"daily_cap": 2, "stop_words": ["Chega"], "confirmation_text": "Ok, paramos."}, at=AT)
    assert e.typed.daily_cap == 2 and e.typed.stop_words == ("Chega",)
    with pytest.raises(InvalidValue) as exc:
        e.change_settings({"daily_cap": 0}, at=AT)
    assert exc.value.field == "daily_cap"
    with pytest.raises(InvalidValue):
        e.change_settings({"colour": "red"}, at=AT)
    e.add_endpoint("ep1", url="https://erp.example/hooks", secret="whsec", events=["contact.read"], at=AT)
    e.add_endpoint("ep2", url="https://erp.example/all", secret="whsec2", events=[], at=AT)
    assert [eid for eid, _ in e.endpoints_for("contact.read")] == ["ep1", "ep2"]
    assert [eid for eid, _ in e.endpoints_for("queue.paused")] == ["ep2"]
    with pytest.raises(InvalidValue):
        e.add_endpoint("ep3", url="ftp://x", secret="s", events=[], at=AT)
    with pytest.raises(InvalidValue):
        e.add_endpoint("ep3", url="https://x", secret="s", events=["contact.nope"], at=AT)


def test_erp_retries_last_at_least_a_day_then_give_up() -> None:
    assert sum(ERP_RETRY_DELAYS_S) >= 24 * 3600
    assert erp_next_attempt(1, AT) == AT + timedelta(seconds=10)
    assert erp_next_attempt(len(ERP_RETRY_DELAYS_S) + 1, AT) is None


# ---- signatures --------------------------------------------------------------------------------------


def test_signature_round_trip_tamper_and_replay() -> None:
    body = b'{"id":"e1"}'
    header = signature_header("whsec", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify(header, body, "whsec", now=1_700_000_100)
    assert not verify(header, body + b" ", "whsec", now=1_700_000_100)
    assert not verify(header, body, "other", now=1_700_000_100)
    assert not verify(header, body, "whsec", now=1_700_000_000 + 301)  # replay outside the tolerance
    assert not verify(None, body, "whsec", now=1_700_000_000)
    assert not verify("v1=abc", body, "whsec", now=1_700_000_000)


# ---- JID lookup --------------------------------------------------------------------------------------


def test_lookup_candidates_both_forms_of_a_brazilian_mobile() -> None:
    assert lookup_candidates("+5575988251234") == ("5575988251234", "557588251234")
    assert lookup_candidates("+553130001234") == ("553130001234",)
    assert lookup_candidates("+16502530000") == ("16502530000",)


def test_choose_account_takes_the_one_that_exists() -> None:
    candidates = lookup_candidates("+5575988251234")
    old = choose_account(candidates, {"5575988251234": None, "557588251234": "557588251234@s.whatsapp.net"})
    assert old == Account(jid="557588251234@s.whatsapp.net")
    new = choose_account(
        lookup_candidates("+5547988123456"),
        {"5547988123456": "5547988123456@s.whatsapp.net", "554788123456": None},
    )
    assert new.jid == "5547988123456@s.whatsapp.net"
    assert choose_account(candidates, {}) == Account(jid=None)


def test_lookup_cache_expiry_and_batches() -> None:
    assert is_fresh(Account("j"), AT, AT + timedelta(days=29))
    assert not is_fresh(Account("j"), AT, AT + timedelta(days=30))
    assert not is_fresh(Account(None), AT, AT + timedelta(days=1))
    phones = [f"+55119876543{i:02d}" for i in range(30)]
    batches = lookup_batches(phones + phones[:3])
    assert [len(b) for b in batches] == [50, 10]
    assert all(len(b) <= 50 for b in batches)


# ---- per-debtor cap ----------------------------------------------------------------------------------


def test_cap_defers_the_second_dunning_message_to_the_next_opening() -> None:
    calendar = parse_calendar(default_calendar_spec())
    assert decide_cap(
        sent_today=0, cap=1, template_type="overdue", cap_notices=False, calendar=calendar, now=AT
    ).allowed
    refused = decide_cap(
        sent_today=1, cap=1, template_type="overdue", cap_notices=False, calendar=calendar, now=AT
    )
    assert not refused.allowed
    assert refused.not_before == datetime(2025, 1, 16, 11, 0, tzinfo=UTC)  # Thursday 08:00 in São Paulo
    assert decide_cap(
        sent_today=5, cap=1, template_type="notification", cap_notices=False, calendar=calendar, now=AT
    ).allowed
    notice = decide_cap(
        sent_today=1, cap=1, template_type="notification", cap_notices=True, calendar=calendar, now=AT
    )
    assert notice.not_before == datetime(
        2025, 1, 16, 3, 0, tzinfo=UTC
    )  # local midnight: notices ignore hours
    assert decide_cap(
        sent_today=1, cap=2, template_type="upcoming", cap_notices=False, calendar=calendar, now=AT
    ).allowed


def test_review_pause_after_policy_or_gateway_changes() -> None:
    from billing.domain.queue import review_pause

    later = AT + timedelta(hours=5)
    kw = {"policy_changed": True, "gateway_changed": False}
    assert review_pause("outside_business_hours", later, open_now=True, next_opening=AT, **kw) == (
        "resume",
        None,
    )
    assert review_pause("outside_business_hours", later, open_now=False, next_opening=AT, **kw) == (
        "move",
        AT,
    )
    assert review_pause("outside_business_hours", AT, open_now=False, next_opening=AT, **kw) == ("keep", None)
    assert review_pause("daily_limit_reached", later, open_now=True, next_opening=None, **kw) == (
        "resume",
        None,
    )
    assert review_pause("paused_by_admin", None, open_now=True, next_opening=None, **kw) == ("keep", None)
    gw = {"policy_changed": False, "gateway_changed": True}
    assert review_pause("gateway_misconfigured", None, open_now=True, next_opening=None, **gw) == (
        "resume",
        None,
    )
    assert review_pause("outside_business_hours", later, open_now=True, next_opening=None, **gw) == (
        "keep",
        None,
    )
