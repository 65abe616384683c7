"""The Conversation aggregate: a tenant's exchange with one phone, and its consent ledger.

One aggregate per (tenant, E.164 phone) (id :func:`conversation_id`, UUID v5), created by the first
reply. It records every reply the debtor sent (``Replied``), the opt-out a reply caused (``OptedOut``,
with the message and the stop word), the confirmation we sent, and an admin lifting it on the debtor's
request (``OptOutLifted``). Every later reminder to an opted-out phone is skipped ``opted_out`` without a
send. Replies are idempotent on the gateway's message id (webhooks are retried and duplicated).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from billing.domain.errors import Conflict
from billing.domain.optout import matching_stop_word

__all__ = ["Conversation", "conversation_id"]

_NAMESPACE = UUID("0b6c3f0e-2d4b-4f57-b1c1-5e2b7f3d8a90")
_REMEMBERED = 200
"""Message ids kept to refuse duplicates (a debtor's conversation rarely holds more replies)."""


def conversation_id(tenant_id: UUID, phone: str) -> UUID:
    """The id of the conversation of ``tenant_id`` with E.164 ``phone``."""
    return uuid5(_NAMESPACE, f"{tenant_id}:{phone}")


class Conversation(Aggregate):
    """See the module docstring."""

    TOPIC = "billing.Conversation"

    if TYPE_CHECKING:
        tenant_id: UUID
        phone: str
        opted_out: bool
        opted_out_at: datetime | None
        seen: list[str]
        replies: int

    class Created(Aggregate.Created):
        """Base of the creation event; never recorded itself."""

        TOPIC = "billing.Conversation.Created"

    class Opened(Created):
        """First contact from this phone."""

        TOPIC = "billing.Conversation.Opened"
        tenant_id: UUID
        phone: str

        def apply(self, aggregate: Conversation) -> None:
            aggregate.tenant_id = self.tenant_id
            aggregate.phone = self.phone
            aggregate.opted_out = False
            aggregate.opted_out_at = None
            aggregate.seen = []
            aggregate.replies = 0

    class Replied(Aggregate.Event):
        """The debtor wrote ``text`` (gateway message ``message_id``), answering ``contact_id`` if known."""

        TOPIC = "billing.Conversation.Replied"
        message_id: str
        text: str
        contact_id: UUID | None
        remote_jid: str

        def apply(self, aggregate: Conversation) -> None:
            aggregate.seen = [*aggregate.seen[-(_REMEMBERED - 1) :], self.message_id]
            aggregate.replies += 1

    class OptedOut(Aggregate.Event):
        """The reply ``message_id`` matched ``stop_word``: no more reminders to this phone."""

        TOPIC = "billing.Conversation.OptedOut"
        message_id: str
        stop_word: str
        contact_id: UUID | None

        def apply(self, aggregate: Conversation) -> None:
            aggregate.opted_out = True
            aggregate.opted_out_at = self.timestamp

    class ConfirmationSent(Aggregate.Event):
        """The tenant's confirmation text went out (gateway message ``message_id``)."""

        TOPIC = "billing.Conversation.ConfirmationSent"
        message_id: str

        def apply(self, aggregate: Conversation) -> None:
            pass

    class OptOutLifted(Aggregate.Event):
        """An admin lifted the opt-out (the debtor asked for reminders again): ``by`` and ``reason``."""

        TOPIC = "billing.Conversation.OptOutLifted"
        by: str
        reason: str

        def apply(self, aggregate: Conversation) -> None:
            aggregate.opted_out = False
            aggregate.opted_out_at = None

    @classmethod
    def open(cls, tenant_id: UUID, phone: str, *, at: datetime) -> Conversation:
        """A new conversation (``phone`` E.164)."""
        return cls._create(
            cls.Opened, id=conversation_id(tenant_id, phone), tenant_id=tenant_id, phone=phone, timestamp=at
        )

    def receive(
        self,
        *,
        message_id: str,
        text: str,
        remote_jid: str,
        contact_id: UUID | None,
        stop_words: tuple[str, ...],
        at: datetime,
    ) -> str | None:
        """Record a reply; when it matches one of ``stop_words`` and the phone is not opted out yet,
        record the opt-out too. Returns the matched stop word when this reply opted the phone out, else
        None. A message id already recorded records nothing (returns None)."""
        if message_id in self.seen:
            return None
        self.trigger_event(
            self.Replied,
            message_id=message_id,
            text=text,
            contact_id=contact_id,
            remote_jid=remote_jid,
            timestamp=at,
        )
        word = matching_stop_word(text, stop_words)
        if word is None or self.opted_out:
            return None
        self.trigger_event(
            self.OptedOut, message_id=message_id, stop_word=word, contact_id=contact_id, timestamp=at
        )
        return word

    def confirmation_sent(self, message_id: str, *, at: datetime) -> None:
        """Record the confirmation's gateway message id."""
        self.trigger_event(self.ConfirmationSent, message_id=message_id, timestamp=at)

    def lift_opt_out(self, *, by: str, reason: str, at: datetime) -> None:
        """Lift the opt-out.

        Raises:
            Conflict: ``not_opted_out`` when the phone is not opted out.
        """
        if not self.opted_out:
            raise Conflict("this phone is not opted out", code="not_opted_out")
        self.trigger_event(self.OptOutLifted, by=by, reason=reason, timestamp=at)
