"""The worker's WhatsApp-account answers kept in memory: a peer answered by this process's own lookup is
used without reading ``whatsapp_accounts``; an answer that is no longer fresh is read again from the
table (and looked up again when the table has nothing fresher). The table and the gateway are fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from billing.domain.whatsapp import ABSENT_TTL, Account
from billing.worker.recipient import Recipient

NOW = datetime(2025, 1, 20, 13, 0, tzinfo=UTC)


class Table:
    """``whatsapp_accounts`` in a dict, counting reads."""

    def __init__(self) -> None:
        self.rows: dict[tuple[UUID, str], tuple[str | None, datetime]] = {}
        self.reads = 0

    def cached(self, tenant_id: UUID, phones: list[str]) -> dict[str, tuple[str | None, datetime]]:
        self.reads += 1
        return {p: self.rows[(tenant_id, p)] for p in phones if (tenant_id, p) in self.rows}

    def remember(self, tenant_id: UUID, accounts: dict[str, Account], now: datetime) -> None:
        for phone, account in accounts.items():
            self.rows[(tenant_id, phone)] = (account.jid, now)


class Gateway:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def lookup_accounts(self, numbers: Sequence[str]) -> dict[str, str | None]:
        self.calls.append(list(numbers))
        return {n: f"{n}@s.whatsapp.net" for n in numbers}


class Person:
    def __init__(self, tenant_id: UUID, phone: str) -> None:
        self.tenant_id, self.phone, self.queue_id, self.id = tenant_id, phone, uuid4(), uuid4()


def recipient(table: Table, peers: list[str]) -> Recipient:
    r = Recipient(store=None, pool=None)  # type: ignore[arg-type]
    r._cached = table.cached  # type: ignore[method-assign]
    r._remember = table.remember  # type: ignore[method-assign]
    r._peers = lambda contact, now, room: peers  # type: ignore[method-assign]
    return r


async def test_a_peer_answered_by_this_process_is_used_without_a_table_read() -> None:
    tenant = uuid4()
    table, gateway = Table(), Gateway()
    r = recipient(table, peers=["+5511987654302"])
    first = await r.account(Person(tenant, "+5511987654301"), gateway, NOW)  # type: ignore[arg-type]
    assert first is not None and first.exists and len(gateway.calls) == 1
    reads = table.reads
    peer = await r.account(Person(tenant, "+5511987654302"), gateway, NOW)  # type: ignore[arg-type]
    assert peer is not None and peer.exists
    assert (table.reads, len(gateway.calls)) == (reads, 1)  # from memory: no read, no second call


async def test_an_answer_no_longer_fresh_is_read_again_and_looked_up_again() -> None:
    tenant, phone = uuid4(), "+5511987654301"
    table, gateway = Table(), Gateway()
    table.rows[(tenant, phone)] = (None, NOW - ABSENT_TTL - timedelta(seconds=1))  # "none", a day old
    r = recipient(table, peers=[])
    r._keep(tenant, phone, None, NOW - ABSENT_TTL - timedelta(seconds=1))
    answer = await r.account(Person(tenant, phone), gateway, NOW)  # type: ignore[arg-type]
    assert answer is not None and answer.exists  # asked the gateway again
    assert len(gateway.calls) == 1 and table.reads >= 1
    assert table.rows[(tenant, phone)][1] == NOW


async def test_a_fresher_row_written_by_another_process_replaces_a_stale_memory_answer() -> None:
    tenant, phone = uuid4(), "+5511987654301"
    table, gateway = Table(), Gateway()
    r = recipient(table, peers=[])
    r._keep(tenant, phone, None, NOW - ABSENT_TTL - timedelta(seconds=1))
    table.rows[(tenant, phone)] = ("5511987654301@s.whatsapp.net", NOW - timedelta(minutes=1))
    answer: Any = await r.account(Person(tenant, phone), gateway, NOW)  # type: ignore[arg-type]
    assert answer == Account("5511987654301@s.whatsapp.net") and gateway.calls == []


class Notice(Person):
    template_type = "notification"  # not under the per-debtor cap by default


def test_gather_known_answers_from_a_known_account_and_none_when_only_a_lookup_can_tell() -> None:
    from billing.domain.debtor_cap import CapDecision
    from billing.domain.sending import RecipientFacts
    from billing.eventstore import EventStore

    tenant = uuid4()
    table = Table()
    r = recipient(table, peers=[])
    r.store = EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})  # no Conversation: not opted out
    known, unknown = Notice(tenant, "+5511987654301"), Notice(tenant, "+5511987654309")
    table.rows[(tenant, known.phone)] = ("5511987654301@s.whatsapp.net", NOW - timedelta(hours=1))
    calendar: Any = None  # read only by the cap, which notices skip

    def gather_known(contact: Any) -> Any:
        [answer] = r.gather_known_many([(contact, calendar, NOW)])
        return answer

    assert gather_known(known) == RecipientFacts(
        opted_out=False, account=Account("5511987654301@s.whatsapp.net"), cap=CapDecision(allowed=True)
    )
    assert gather_known(unknown) is None
    assert table.reads == 2
    assert gather_known(known) is not None and table.reads == 2  # kept in memory


def test_gather_known_many_reads_the_table_once_for_the_groups_phones_not_in_memory() -> None:
    from billing.domain.debtor_cap import CapDecision
    from billing.domain.sending import RecipientFacts
    from billing.eventstore import EventStore

    tenant = uuid4()
    table = Table()
    r = recipient(table, peers=[])
    r.store = EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})  # no Conversation: not opted out
    phones = ["+5511987654301", "+5511987654302", "+5511987654309"]
    for phone in phones[:2]:  # answered (by another process): in the table, not in this one's memory
        table.rows[(tenant, phone)] = (f"{phone[1:]}@s.whatsapp.net", NOW - timedelta(hours=1))
    calendar: Any = None  # read only by the cap, which notices skip
    answers = r.gather_known_many([(Notice(tenant, p), calendar, NOW) for p in phones])  # type: ignore[misc]
    allowed = CapDecision(allowed=True)
    assert answers == [
        RecipientFacts(False, Account("5511987654301@s.whatsapp.net"), allowed),
        RecipientFacts(False, Account("5511987654302@s.whatsapp.net"), allowed),
        None,  # no answer anywhere: only a lookup call can tell
    ]
    assert table.reads == 1  # one for the group's three phones
    r.gather_known_many([(Notice(tenant, p), calendar, NOW) for p in phones[:2]])  # type: ignore[misc]
    assert table.reads == 1  # both kept in memory
